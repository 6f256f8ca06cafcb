using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;
using Peft.Host.Commands;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// LoRA through the real host: plugins loaded from the test output's plugins/ folder, the imported stories260K
/// model, and the `peft` verbs exactly as a user runs them.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class LoraEndToEndTests(Stories260KFixture fx)
{
    static readonly string[] Targets = ["q_proj", "v_proj"];
    const int Rank = 2;
    const double Alpha = 4;

    static readonly string EvalText =
        "Once upon a time, there was a little girl named Lily. She loved to play outside.\n\n" +
        "Tom had a red ball. He gave it to his friend Sam. Sam was happy!";

    static (int Code, string Out, string Err) Peft(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(args, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    static double JsonLoss(string stdout) =>
        JsonNode.Parse(stdout.TrimEnd().Split('\n')[^1])!["loss"]!.GetValue<double>();

    /// <summary>Deterministic A (r, in) and B (out, r) for every targeted module, as PEFT keys.</summary>
    Dictionary<string, Tensor> MakeFactors()
    {
        var gen = new Generator(1234);
        var tensors = new Dictionary<string, Tensor>();
        var model = fx.Model;
        foreach (var name in model.LinearLayerNames.Where(n => Targets.Any(t => n.EndsWith("." + t))))
        {
            var layer = model.GetLinear(name);
            tensors[$"base_model.model.{name}.lora_A.weight"] = torch.randn(new long[] { Rank, layer.InFeatures }, generator: gen) * 0.3;
            tensors[$"base_model.model.{name}.lora_B.weight"] = torch.randn(new long[] { layer.OutFeatures, Rank }, generator: gen) * 0.3;
        }
        return tensors;
    }

    string WriteAdapter(Dictionary<string, Tensor> factors, bool rslora)
    {
        var dir = fx.NewDir(rslora ? "rslora" : "lora");
        Directory.CreateDirectory(dir);
        var config = new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = Rank, ["lora_alpha"] = Alpha,
            ["lora_dropout"] = 0.0, ["target_modules"] = new JsonArray("q_proj", "v_proj"), ["bias"] = "none",
            ["use_rslora"] = rslora, ["fan_in_fan_out"] = false,
        };
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config.ToJsonString());
        Safetensors.Save(Path.Combine(dir, "adapter_model.safetensors"), factors, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    /// <summary>The eval loss computed by hand: W' = W + scaling * B @ A written into a fresh copy of the base, then mean NLL of [BOS]+tokens.</summary>
    double HandLoss(Dictionary<string, Tensor> factors, double scaling)
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        model.eval();
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
        {
            foreach (var name in model.LinearLayerNames.Where(n => Targets.Any(t => n.EndsWith("." + t))))
            {
                var layer = model.GetLinear(name);
                var a = factors[$"base_model.model.{name}.lora_A.weight"];
                var b = factors[$"base_model.model.{name}.lora_B.weight"];
                layer.SetDenseWeight(layer.DenseWeight() + scaling * b.matmul(a));
            }
        }
        double nll = 0;
        long count = 0;
        foreach (var doc in EvalText.Split("\n\n"))
        {
            var ids = new List<long> { 1 };
            ids.AddRange(fx.Tokenizer.Encode(doc).Select(i => (long)i));
            var logProbs = model.Logits(torch.tensor(ids.ToArray()).unsqueeze(0))[0].to(ScalarType.Float64).log_softmax(-1);
            for (int i = 1; i < ids.Count; i++) nll -= logProbs[i - 1, ids[i]].item<double>();
            count += ids.Count - 1;
        }
        return nll / count;
    }

    [Fact]
    public void Eval_with_an_adapter_gives_the_loss_of_the_LoRA_formula_and_rsLoRA_rescales_it()
    {
        var factors = MakeFactors();
        var data = Path.Combine(fx.NewDir("data"), "eval.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, EvalText);

        var plain = Peft("eval", "--model", fx.ModelDir, "--adapter", WriteAdapter(factors, rslora: false), "--data", data, "--json");
        plain.Code.Should().Be(0, plain.Err);
        var rs = Peft("eval", "--model", fx.ModelDir, "--adapter", WriteAdapter(factors, rslora: true), "--data", data, "--json");
        rs.Code.Should().Be(0, rs.Err);
        var baseline = Peft("eval", "--model", fx.ModelDir, "--data", data, "--json");

        double plainHand = HandLoss(factors, Alpha / Rank);          // alpha / r = 2
        double rsHand = HandLoss(factors, Alpha / Math.Sqrt(Rank));  // rsLoRA: alpha / sqrt(r) = 2.83
        JsonLoss(plain.Out).Should().BeApproximately(plainHand, 1e-5);
        JsonLoss(rs.Out).Should().BeApproximately(rsHand, 1e-5);
        Math.Abs(plainHand - rsHand).Should().BeGreaterThan(1e-3);
        Math.Abs(JsonLoss(baseline.Out) - plainHand).Should().BeGreaterThan(1e-3);
        foreach (var t in factors.Values) t.Dispose();
    }

    const string LoraMethod = """{ "name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }""";

    string Train(string outDir, params string[] extra) => Train(outDir, LoraMethod, extra);

    string Train(string outDir, string methodJson, string[] extra)
    {
        var config = Path.Combine(fx.NewDir("cfg"), "train.json");
        Directory.CreateDirectory(Path.GetDirectoryName(config)!);
        File.WriteAllText(config, $$"""
        {
          "model": { "path": {{JsonValue.Create(fx.ModelDir).ToJsonString()}} },
          "method": {{methodJson}},
          "data": { "path": {{JsonValue.Create(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl")).ToJsonString()}},
                    "seq_len": 128, "validation_fraction": 0.05, "max_rows": 200 },
          "training": { "seed": 7, "batch_size": 4, "max_steps": 8, "learning_rate": 0.005, "lr_scheduler": "cosine",
                        "warmup_steps": 2, "eval_every": 4, "eval_batches": 4, "checkpoint_every": 4, "keep_last_checkpoints": 3, "log_every": 1 },
          "output": { "dir": {{JsonValue.Create(outDir).ToJsonString()}} }
        }
        """);
        var r = Peft(["train", "--config", config, .. extra]);
        r.Code.Should().Be(0, r.Err + r.Out);
        return r.Out;
    }

    static List<JsonObject> Metrics(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();

    [Fact]
    public void Train_writes_a_PEFT_adapter_whose_merge_evaluates_the_same_and_resume_is_bit_identical()
    {
        var outDir = fx.NewDir("run");
        Train(outDir);
        var adapterDir = Path.Combine(outDir, "adapter");
        File.Exists(Path.Combine(adapterDir, "adapter_model.safetensors")).Should().BeTrue();
        var keys = Safetensors.ReadHeader(Path.Combine(adapterDir, "adapter_model.safetensors")).Tensors.Select(t => t.Name).ToList();
        keys.Should().HaveCount(5 * 7 * 2).And.OnlyContain(k => k.StartsWith("base_model.model.model.layers.") && (k.EndsWith(".lora_A.weight") || k.EndsWith(".lora_B.weight")));

        // held-out loss falls
        var evals = Metrics(outDir).Where(m => m.ContainsKey("eval_loss") && (int)m["step"]! > 0).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();
        evals.Should().HaveCount(2);
        evals[1].Should().BeLessThan(evals[0]);

        // merge → eval equals adapter eval
        var data = Path.Combine(fx.NewDir("data"), "eval.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, EvalText);
        var merged = fx.NewDir("merged");
        Peft("merge", "--model", fx.ModelDir, "--adapter", adapterDir, "--out", merged).Code.Should().Be(0);
        var withAdapter = JsonLoss(Peft("eval", "--model", fx.ModelDir, "--adapter", adapterDir, "--data", data, "--json").Out);
        var mergedLoss = JsonLoss(Peft("eval", "--model", merged, "--data", data, "--json").Out);
        mergedLoss.Should().BeApproximately(withAdapter, 1e-5);
        Directory.GetFiles(merged).Select(Path.GetFileName).Should().Contain(["config.json", "model.safetensors", "tokenizer.model"]);

        // resume from the step-4 checkpoint in a copy of the run: steps 5..8 are bit-identical
        var resumedDir = fx.NewDir("resumed");
        CopyDirectory(outDir, resumedDir);
        Directory.Delete(Path.Combine(resumedDir, "checkpoints", "step-8"), recursive: true);
        Directory.Delete(Path.Combine(resumedDir, "adapter"), recursive: true);
        Train(resumedDir, "--resume", Path.Combine(resumedDir, "checkpoints", "step-4"));
        var first = Metrics(outDir).Where(m => m["step"]!.GetValue<int>() > 4 && m.ContainsKey("loss")).Select(m => m["loss"]!.GetValue<double>()).ToList();
        var second = Metrics(resumedDir).Where(m => m["step"]!.GetValue<int>() > 4 && m.ContainsKey("loss")).Select(m => m["loss"]!.GetValue<double>()).ToList();
        first.Should().HaveCount(4);
        second.Should().Equal(first);
        File.ReadAllBytes(Path.Combine(resumedDir, "adapter", "adapter_model.safetensors"))
            .Should().Equal(File.ReadAllBytes(Path.Combine(adapterDir, "adapter_model.safetensors")));
    }

    [Fact]
    public void Full_fine_tuning_writes_an_HF_model_folder_that_eval_loads()
    {
        var outDir = fx.NewDir("full");
        Train(outDir, """{ "name": "full" }""", ["--set", "training:max_steps=2", "--set", "training:eval_every=0", "--set", "training:checkpoint_every=0"]);
        var modelDir = Path.Combine(outDir, "model");
        Directory.GetFiles(modelDir).Select(Path.GetFileName).Should().Contain(["config.json", "model.safetensors", "tokenizer.model"]);
        Directory.Exists(Path.Combine(outDir, "adapter")).Should().BeFalse();

        var data = Path.Combine(fx.NewDir("data"), "eval.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, EvalText);
        var trained = Peft("eval", "--model", modelDir, "--data", data, "--json");
        trained.Code.Should().Be(0, trained.Err);
        var baseline = JsonLoss(Peft("eval", "--model", fx.ModelDir, "--data", data, "--json").Out);
        Math.Abs(JsonLoss(trained.Out) - baseline).Should().BeGreaterThan(1e-6, "two full fine-tuning steps changed the weights");
    }

    static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        foreach (var d in Directory.GetDirectories(from)) CopyDirectory(d, Path.Combine(to, Path.GetFileName(d)));
    }
}
