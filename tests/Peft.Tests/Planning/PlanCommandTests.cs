using System.Text.Json.Nodes;
using Peft.Tests.Plugins;
using static Peft.Tests.Planning.PlanTestKit;

namespace Peft.Tests.Planning;

/// <summary><c>peft plan</c> as users run it: table, JSON, plugins' own estimates, and bad input.</summary>
public sealed class PlanCommandTests
{
    [Fact]
    public void Json_has_snake_case_byte_counts_and_a_total()
    {
        var (code, stdout, stderr) = RunPeft("plan", "--model", "llama2-7b", "--method", "lora", "--r", "16", "--batch-size", "0", "--json");
        code.Should().Be(0, stderr);
        var json = JsonNode.Parse(stdout)!.AsObject();
        json["trainable_parameters"]!.GetValue<long>().Should().Be(8_388_608);
        long sum = new[] { "base_weight_bytes", "quantization_statistics_bytes", "trainable_weight_bytes", "gradient_bytes",
                "optimizer_state_bytes", "master_weight_bytes", "projection_bytes", "activation_bytes" }
            .Sum(k => json[k]!.GetValue<long>());
        json["total_bytes"]!.GetValue<long>().Should().Be(sum);
        json["per_gpu"]!["total_bytes"]!.GetValue<long>().Should().Be(sum);
        // the bundled LoRA plugin planned itself
        json["sources"]!.AsArray().Select(s => s!.GetValue<string>()).Should().Contain(s => s.StartsWith("method lora: plugin's EstimateMemory"));
    }

    [Fact]
    public void Table_names_each_component_and_the_gpu_count()
    {
        var (code, stdout, stderr) = RunPeft("plan", "--model", "llama2-70b", "--method", "qlora", "--target-modules", "q_proj,k_proj,v_proj,o_proj",
            "--gpu-memory", "48", "--batch-size", "0");
        code.Should().Be(0, stderr);
        stdout.Should().Contain("quantization statistics").And.Contain("base weights (frozen)").And.Contain("optimizer state");
        // 35.3 GB of codes + 1.1 GB statistics + bf16 embeddings and head: fits one 48 GB GPU without activations
        stdout.Should().Contain("fits on 1 x 48.000 GB GPU");
    }

    [Fact]
    public void A_third_party_plugin_with_its_own_estimate_is_planned_without_host_changes()
    {
        var (code, stdout, stderr) = RunPeft("plan", "--model", "llama2-7b", "--method", "scale-vector", "--batch-size", "0", "--json",
            "--set", $"plugins:directories:0={PluginTestFolders.TestPlugin("Planned")}");
        code.Should().Be(0, stderr);
        var json = JsonNode.Parse(stdout)!;
        // one scale per output of each decoder projection: 32 * (4*4096 + 2*11008 + 4096) = 1,359,872
        json["trainable_parameters"]!.GetValue<long>().Should().Be(1_359_872);
        json["sources"]!.AsArray().Select(s => s!.GetValue<string>()).Should().Contain("method scale-vector: plugin's EstimateMemory (1,359,872 trainable parameters)");
        // AdamW over 224 tensors (TensorCount): m + v fp32 + 8-byte counters
        json["optimizer_state_bytes"]!.GetValue<long>().Should().Be(8 * 1_359_872L + 8 * 224);
    }

    [Theory]
    [InlineData("--model", "llama9-7b", "'llama9-7b' is neither a preset")]
    [InlineData("--gpus", "0", "'--gpus' has value '0'")]
    [InlineData("--gpus", "-2", "'--gpus' has value '-2'")]
    [InlineData("--gpu-memory", "0", "'--gpu-memory' has value '0'")]
    [InlineData("--gpu-memory", "-8", "'--gpu-memory' has value '-8'")]
    [InlineData("--zero", "4", "'--zero' has value '4'")]
    [InlineData("--method", "lora+galore+x", "unknown method")]
    [InlineData("--method", "nosuch", "unknown method")]
    [InlineData("--quantize", "nf3", "'--quantize' has value 'nf3'")]
    [InlineData("--precision", "fp8", "'--precision' has value 'fp8'")]
    [InlineData("--target-modules", "q_proj,,v_proj", "'--target-modules'")]
    public void Bad_input_is_one_line_and_exit_code_2(string option, string value, string expected)
    {
        var args = new List<string> { "plan", "--model", "llama2-7b", "--method", "lora" };
        int at = args.IndexOf(option);
        if (at >= 0) args[at + 1] = value; else args.AddRange([option, value]);
        var (code, stdout, stderr) = RunPeft(args.ToArray());
        code.Should().Be(2);
        stdout.Should().BeEmpty();
        stderr.TrimEnd().Should().NotContain("\n").And.Contain(expected).And.StartWith("peft plan: error:");
    }

    [Fact]
    public void A_config_json_without_the_needed_fields_is_one_line_and_exit_code_2()
    {
        var dir = Directory.CreateTempSubdirectory("peft-plan-").FullName;
        try
        {
            var config = Path.Combine(dir, "config.json");
            File.WriteAllText(config, """{ "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2 }""");
            var (code, stdout, stderr) = RunPeft("plan", "--model", config, "--method", "lora");
            code.Should().Be(2);
            stdout.Should().BeEmpty();
            stderr.TrimEnd().Should().NotContain("\n").And.Contain("config.json").And.Contain("required key");
            // the folder works the same way
            RunPeft("plan", "--model", dir, "--method", "lora").Err.Should().Contain("required key");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_model_folder_config_is_planned_with_its_exact_shapes()
    {
        var dir = Directory.CreateTempSubdirectory("peft-plan-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), """
                { "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 3,
                  "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000 }
                """);
            var (code, stdout, stderr) = RunPeft("plan", "--model", dir, "--method", "lora", "--r", "4", "--target-modules", "k_proj", "--json", "--batch-size", "0");
            code.Should().Be(0, stderr);
            // k_proj: 256 -> 2 heads * 32 = 64; r (in + out) = 4 * (256 + 64) = 1280 per layer, 3 layers
            JsonNode.Parse(stdout)!["trainable_parameters"]!.GetValue<long>().Should().Be(3840);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Seed_assumptions_reproduce_the_seeds_lora_total()
    {
        var (code, stdout, stderr) = RunPeft("plan", "--model", "seed-70b", "--method", "lora", "--target-modules", "q_proj,k_proj,v_proj,o_proj", "--seed-assumptions", "--json");
        code.Should().Be(0, stderr);
        Math.Round(JsonNode.Parse(stdout)!["total_bytes"]!.GetValue<long>() / 1e9, 2).Should().Be(141.34);
        RunPeft("plan", "--model", "seed-70b", "--method", "lisa+lora", "--seed-assumptions").Code.Should().Be(2);
    }
}
