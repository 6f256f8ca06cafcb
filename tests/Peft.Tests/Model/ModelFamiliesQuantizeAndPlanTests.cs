using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Host.Model;
using static Peft.Tests.Model.ModelFamiliesTests;

namespace Peft.Tests.Model;

/// <summary>
/// <c>peft quantize</c>, a quantized folder through eval/generate, and <c>peft plan --model DIR</c> on the new
/// families' folders (Llama 3 with head_dim/biases, Qwen2 with q/k/v biases and a tied head, Mistral with GQA 4:1),
/// written by <see cref="ModelFamiliesTests.WriteFolder"/> in bf16 with the Llama 3 tokenizer.
/// </summary>
public sealed class ModelFamiliesQuantizeAndPlanTests : IDisposable
{
    // Each family folder is about 65 MB (a 128,256-row embedding): a test removes the ones it wrote.
    readonly List<string> _written = [];
    string Kept(string modelDir) { _written.Add(Path.GetDirectoryName(modelDir)!); return modelDir; }
    public void Dispose() { foreach (var root in _written) Directory.Delete(root, recursive: true); }

    static (int Code, string Out, string Err) Cli(params string[] args) => ModelFamiliesTests.Peft(args);

    [Theory]
    [MemberData(nameof(Families), MemberType = typeof(ModelFamiliesTests))]
    public void Quantize_writes_a_bnb_folder_that_evaluates_as_in_memory_quantization(string family)
    {
        var dir = Kept(WriteFolder(family, seed: 5));
        var work = Path.GetDirectoryName(dir)!;
        var evalData = Path.Combine(work, "eval.txt");
        File.WriteAllText(evalData, "Hello, my dog is cute.\n\nThe quick brown fox jumps over the lazy dog.");
        var q = Path.Combine(work, "nf4");

        var quantize = Cli("quantize", "--model", dir, "--method", "nf4", "--out", q);
        quantize.Code.Should().Be(0, quantize.Err);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(q, "config.json")))!;
        cfg["model_type"]!.GetValue<string>().Should().Be(family == "llama3" ? "llama" : family);
        cfg["quantization_config"]!["bnb_4bit_quant_type"]!.GetValue<string>().Should().Be("nf4");
        var names = Safetensors.ReadHeader(Path.Combine(q, "model.safetensors")).Tensors.ToDictionary(t => t.Name, t => t);
        const string qProj = "model.layers.1.self_attn.q_proj";
        names[qProj + ".weight"].DType.Should().Be("U8");
        names.Keys.Should().Contain([qProj + ".weight.absmax", qProj + ".weight.nested_absmax", qProj + ".weight.quant_state.bitsandbytes__nf4"]);
        // biases stay full precision beside the packed weight (Qwen2/Llama 3 q/k/v; Llama 3's o_proj and MLP too)
        if (family == "mistral") names.Keys.Should().NotContain(k => k.EndsWith(".bias"));
        else names[qProj + ".bias"].DType.Should().BeOneOf("F32", "BF16");
        if (family == "llama3") names.Keys.Should().Contain("model.layers.0.mlp.down_proj.bias");
        names.Keys.Should().NotContain(k => k.StartsWith("model.embed_tokens.weight.") || k.StartsWith("lm_head.weight."), "embeddings and the head stay full precision");

        // the folder loads quantized as it is and gives the loss of quantizing in memory (same codes, same statistics)
        var fromFolder = Cli("eval", "--model", q, "--data", evalData, "--json");
        fromFolder.Code.Should().Be(0, fromFolder.Err);
        var inMemory = Cli("eval", "--model", dir, "--quantize", "nf4", "--data", evalData, "--json");
        inMemory.Code.Should().Be(0, inMemory.Err);
        JsonLoss(fromFolder.Out).Should().BeApproximately(JsonLoss(inMemory.Out), 1e-9);
        var full = JsonLoss(Cli("eval", "--model", dir, "--data", evalData, "--json").Out);
        JsonLoss(fromFolder.Out).Should().NotBe(full, "4-bit weights change the logits");

        var gen = Cli("generate", "--model", q, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "3");
        gen.Code.Should().Be(0, gen.Err);
        gen.Out.Should().StartWith("Hello");
    }

    [Theory]
    [MemberData(nameof(Families), MemberType = typeof(ModelFamiliesTests))]
    public void Plan_reads_the_folder_and_counts_its_parameters_biases_included(string family)
    {
        var dir = Kept(WriteFolder(family, seed: 6));
        long actual;
        using (var model = HfModelFolder.Load(dir))
            actual = model.NamedParameters().Sum(p => p.Parameter.NumberOfElements);   // tied head once, biases included

        foreach (var method in new[] { "lora", "qlora" })
        {
            var plan = Cli("plan", "--model", dir, "--method", method, "--batch-size", "1", "--seq-len", "32", "--json");
            plan.Code.Should().Be(0, plan.Err);
            var json = JsonNode.Parse(plan.Out)!;
            json["total_parameters"]!.GetValue<long>().Should().Be(actual, $"{family} {method}: the planner reads head_dim, biases and tying from config.json");
            json["per_gpu"]!["total_bytes"]!.GetValue<long>().Should().BePositive();
        }
    }
}
