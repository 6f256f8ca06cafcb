using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>Small training configurations on stories260K and helpers to compare folders before and after a command.</summary>
public static class RunKit
{
    /// <summary>A LoRA run on 64 Alpaca rows: a few seconds per step count of 4.</summary>
    public static string WriteConfig(string dir, string modelDir, string outputDir, int maxSteps = 4, int rank = 4, int checkpointEvery = 2, string extraTraining = "")
    {
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, $"train-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, $$"""
        {
          "model": { "path": {{JsonValue.Create(modelDir).ToJsonString()}} },
          "method": { "name": "lora", "r": {{rank}}, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"] },
          "data": { "path": {{JsonValue.Create(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl")).ToJsonString()}},
                    "seq_len": 128, "validation_fraction": 0.1, "max_rows": 96 },
          "training": { "seed": 3, "batch_size": 4, "max_steps": {{maxSteps}}, "learning_rate": 0.005, "lr_scheduler": "constant",
                        "eval_every": 0, "eval_batches": 1, "checkpoint_every": {{checkpointEvery}}, "log_every": 1, "num_threads": 1{{extraTraining}} },
          "output": { "dir": {{JsonValue.Create(outputDir).ToJsonString()}} }
        }
        """);
        return path;
    }

    /// <summary>In-process <c>peft</c> (same code as the executable, captured writers).</summary>
    public static (int Code, string Out, string Err) Peft(params string[] argv)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(argv, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Every file under <paramref name="dir"/> (relative path → SHA-256), for "nothing changed" checks.</summary>
    public static Dictionary<string, string> Snapshot(string dir) =>
        !Directory.Exists(dir) ? new() :
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(
            f => Path.GetRelativePath(dir, f),
            f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    /// <summary>A refusal as the standard asks: exit 2, one line on stderr, no stack trace.</summary>
    public static void ShouldBeACleanRefusal(int code, string stderr, params string[] mentions)
    {
        code.Should().Be(2, stderr);
        var lines = stderr.TrimEnd('\n').Split('\n');
        lines.Should().HaveCount(1, "a refusal is one line: " + stderr);
        stderr.Should().NotContain("   at ").And.NotContain("Exception");
        foreach (var m in mentions) stderr.Should().Contain(m);
    }
}
