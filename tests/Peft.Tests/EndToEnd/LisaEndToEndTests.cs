using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Tests.Import;

namespace Peft.Tests.EndToEnd;

/// <summary>examples/lisa.json and examples/lisa_lora.json through `peft train`, and their outputs through `peft eval` / `peft merge`.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class LisaEndToEndTests(Stories260KFixture fx)
{
    static (int Code, string Out, string Err) Peft(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(args, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    static double JsonLoss((int Code, string Out, string Err) r)
    {
        r.Code.Should().Be(0, r.Err);
        return JsonNode.Parse(r.Out.TrimEnd().Split('\n')[^1])!["loss"]!.GetValue<double>();
    }

    static string Example(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var path = Path.Combine(dir.FullName, "examples", name);
            if (File.Exists(path)) return path;
        }
        throw new FileNotFoundException(name);
    }

    string Train(string example, params string[] extra)
    {
        var outDir = fx.NewDir(Path.GetFileNameWithoutExtension(example));
        var r = Peft(["train", "--config", Example(example), "--set", $"model:path={fx.ModelDir}",
            "--set", $"model:import_llama2c:checkpoint={Stories260KFixture.Checkpoint}", "--set", $"model:import_llama2c:tokenizer={Stories260KFixture.TokenizerModel}", "--set", $"output:dir={outDir}",
            "--set", $"data:path={Path.Combine(Stories260KFixture.DataDir, "..", "alpaca_libre", "alpaca_libre_ok.jsonl")}",
            "--set", "data:max_rows=200", "--set", "training:batch_size=4", "--set", "training:eval_batches=2",
            "--set", "training:checkpoint_every=0", "--set", "training:warmup_steps=0", "--set", "hooks:0:interval=3", .. extra]);
        r.Code.Should().Be(0, r.Err + r.Out);
        return outDir;
    }

    string EvalData()
    {
        var data = Path.Combine(fx.NewDir("data"), "eval.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, "Once upon a time, there was a little girl named Lily. She loved to play outside.\n\nTom had a red ball.");
        return data;
    }

    static List<JsonObject> Metrics(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();

    [Fact]
    public void Lisa_example_writes_an_HF_model_folder_and_records_the_layers_of_each_interval()
    {
        var outDir = Train("lisa.json", "--set", "training:max_steps=6", "--set", "training:eval_every=6");
        var hookLines = Metrics(outDir).Where(m => m.ContainsKey("hook")).ToList();
        hookLines.Select(m => m["step"]!.GetValue<int>()).Should().Equal(1, 4);
        hookLines.Should().OnlyContain(m => m["hook"]!.GetValue<string>() == "lisa" && m["active_layers"]!.AsArray().Count == 2);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "training_summary.json")))!;
        summary["hooks"]![0]!["state"]!["intervals"]!.AsArray().Should().HaveCount(2);

        var modelDir = Path.Combine(outDir, "model");
        Directory.GetFiles(modelDir).Select(Path.GetFileName).Should().Contain(["config.json", "model.safetensors", "tokenizer.model"]);
        var data = EvalData();
        var trained = JsonLoss(Peft("eval", "--model", modelDir, "--data", data, "--json"));
        var baseline = JsonLoss(Peft("eval", "--model", fx.ModelDir, "--data", data, "--json"));
        trained.Should().NotBe(baseline);
    }

    [Fact]
    public void Lisa_lora_example_writes_the_trained_base_and_its_adapter_or_one_merged_folder_and_both_evaluate_alike()
    {
        var outDir = Train("lisa_lora.json", "--set", "training:max_steps=6", "--set", "training:eval_every=6");
        var evals = Metrics(outDir).Where(m => m.ContainsKey("eval_loss") && (int)m["step"]! > 0).ToList();
        evals.Should().HaveCount(1);
        var modelDir = Path.Combine(outDir, "model");
        var adapterDir = Path.Combine(outDir, "adapter");
        JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!["base_model_name_or_path"]!.GetValue<string>()
            .Should().Be(Path.GetFullPath(modelDir), "the adapter sits on the trained base, not on the original model");

        var data = EvalData();
        var withAdapter = JsonLoss(Peft("eval", "--model", modelDir, "--adapter", adapterDir, "--data", data, "--json"));
        var baseOnly = JsonLoss(Peft("eval", "--model", modelDir, "--data", data, "--json"));
        var original = JsonLoss(Peft("eval", "--model", fx.ModelDir, "--data", data, "--json"));
        baseOnly.Should().NotBe(original, "LISA changed the sampled layers' weights");
        withAdapter.Should().NotBe(baseOnly, "the other layers' adapters trained");

        // merge_adapter: one HF folder that evaluates as base + adapter
        var mergedOut = Train("lisa_lora.json", "--set", "training:max_steps=6", "--set", "training:eval_every=6", "--set", "output:merge_adapter=true");
        Directory.Exists(Path.Combine(mergedOut, "adapter")).Should().BeFalse();
        var merged = JsonLoss(Peft("eval", "--model", Path.Combine(mergedOut, "model"), "--data", data, "--json"));
        merged.Should().BeApproximately(withAdapter, 1e-5, "the same seed trains the same weights; merged = base + adapter");
    }
}
