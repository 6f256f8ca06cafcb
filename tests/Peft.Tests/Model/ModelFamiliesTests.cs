using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Tokenization;
using Peft.Testing;
using Peft.Tests.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// A tiny random model of each supported family, written by the test as an HF folder (config.json as HF writes it,
/// bf16 safetensors, the real Llama 3 tokenizer files): Llama 3.x (rope_scaling llama3, head_dim ≠ hidden/heads,
/// attention_bias, mlp_bias), Qwen2 (q/k/v biases, rope_theta 1e6, tied embeddings) and Mistral (sliding window).
/// The host's logits equal a forward written out here in fp64; KV-cached decoding equals the full forward; every
/// verb runs on the folder through the CLI.
/// </summary>
public sealed class ModelFamiliesTests : IDisposable
{
    // Each family folder is about 65 MB (a 128,256-row embedding): a test removes the ones it wrote.
    readonly List<string> _written = [];
    string Kept(string modelDir) { _written.Add(Path.GetDirectoryName(modelDir)!); return modelDir; }
    public void Dispose() { foreach (var root in _written) Directory.Delete(root, recursive: true); }

    const int Vocab = 128256, Hidden = 32, Inter = 48, Layers = 2, Heads = 4;

    public static TheoryData<string> Families => new() { "llama3", "qwen2", "mistral" };

    /// <summary>config.json text per family (the keys real HF configs of that family carry).</summary>
    static string ConfigJson(string family) => family switch
    {
        "llama3" => """
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "vocab_size": 128256, "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
             "attention_bias": true, "mlp_bias": true, "tie_word_embeddings": false, "hidden_act": "silu",
             "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"}
            """,
        "qwen2" => """
            {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128256,
             "max_position_embeddings": 64, "max_window_layers": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
             "sliding_window": 32, "use_sliding_window": false, "tie_word_embeddings": true, "hidden_act": "silu",
             "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16"}
            """,
        "mistral" => """
            {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 128256,
             "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": 5,
             "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
             "torch_dtype": "bfloat16"}
            """,
        _ => throw new ArgumentException(family),
    };

    /// <summary>Write the family's folder with N(0, 0.2) bf16 weights (norms around 1, biases included) and the Llama 3 tokenizer.</summary>
    internal static string WriteFolder(string family, int seed = 1)
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory($"peft-{family}-").FullName, "model");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), ConfigJson(family));
        Llama3TokenizerFiles.CopyInto(dir);
        var c = LlamaConfig.Load(Path.Combine(dir, "config.json"));
        var g = new Generator((ulong)seed);
        // Every temporary in a dispose scope (see LargeVocabularyMemoryTests.WriteFolder: an unreferenced temporary can be
        // finalized mid-operation when another test's thread triggers a GC).
        using var scope = torch.NewDisposeScope();
        Tensor R(params long[] shape) => (torch.randn(shape, generator: g) * 0.2).to(ScalarType.BFloat16);
        Tensor N(long n) => (1 + torch.randn(n, generator: g) * 0.1).to(ScalarType.BFloat16);
        var t = new Dictionary<string, Tensor> { ["model.embed_tokens.weight"] = R(Vocab, Hidden), ["model.norm.weight"] = N(Hidden) };
        if (!c.TieWordEmbeddings) t["lm_head.weight"] = R(Vocab, Hidden);
        bool qkvBias = family is "llama3" or "qwen2", oBias = family == "llama3", mlpBias = family == "llama3";
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            t[p + "input_layernorm.weight"] = N(Hidden);
            t[p + "post_attention_layernorm.weight"] = N(Hidden);
            foreach (var (name, o, i, bias) in new (string, long, long, bool)[]
                     {
                         ("self_attn.q_proj", c.QueryDim, Hidden, qkvBias), ("self_attn.k_proj", c.KeyValueDim, Hidden, qkvBias),
                         ("self_attn.v_proj", c.KeyValueDim, Hidden, qkvBias), ("self_attn.o_proj", Hidden, c.QueryDim, oBias),
                         ("mlp.gate_proj", Inter, Hidden, mlpBias), ("mlp.up_proj", Inter, Hidden, mlpBias), ("mlp.down_proj", Hidden, Inter, mlpBias),
                     })
            {
                t[p + name + ".weight"] = R(o, i);
                if (bias) t[p + name + ".bias"] = R(o);
            }
        }
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), t, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var x in t.Values) x.Dispose();
        return dir;
    }

    /// <summary>The forward pass written out in fp64 from the safetensors file: HF's Llama/Qwen2/Mistral decoder.</summary>
    static double[,] HandLogits(string dir, long[] ids)
    {
        using var scope = torch.NewDisposeScope();
        var c = LlamaConfig.Load(Path.Combine(dir, "config.json"));
        var w = Safetensors.Load(Path.Combine(dir, "model.safetensors")).ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float64));
        Tensor? B(string n) => w.TryGetValue(n, out var b) ? b : null;
        Tensor Lin(Tensor x, string n) => B(n + ".bias") is { } b ? x.matmul(w[n + ".weight"].t()) + b : x.matmul(w[n + ".weight"].t());
        Tensor Rms(Tensor x, string n) => x * (x.pow(2).mean([-1], keepdim: true) + c.RmsNormEps).rsqrt() * w[n];

        int T = ids.Length, d = c.HeadDim, H = c.NumAttentionHeads, Hkv = c.NumKeyValueHeads;
        // Rotary inverse frequencies: theta^(-2i/d), then HF's llama3 bands when configured.
        var inv = new double[d / 2];
        for (int i = 0; i < d / 2; i++)
        {
            double f = Math.Pow(c.RopeTheta, -2.0 * i / d);
            if (c.RopeScaling is { } s)
            {
                double wl = 2 * Math.PI / f, lowWl = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor, highWl = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
                double sm = (s.OriginalMaxPositionEmbeddings / wl - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                f = wl < highWl ? f : wl > lowWl ? f / s.Factor : (1 - sm) * f / s.Factor + sm * f;
            }
            inv[i] = f;
        }
        var cos = torch.zeros(T, d, ScalarType.Float64);
        var sin = torch.zeros(T, d, ScalarType.Float64);
        for (int p = 0; p < T; p++)
            for (int j = 0; j < d; j++)
            {
                cos[p, j] = Math.Cos(p * inv[j % (d / 2)]);
                sin[p, j] = Math.Sin(p * inv[j % (d / 2)]);
            }
        Tensor Rope(Tensor x) => x * cos + torch.cat([-x[.., (d / 2)..], x[.., ..(d / 2)]], 1) * sin; // x (T, d)

        var h = w["model.embed_tokens.weight"].index_select(0, torch.tensor(ids));   // (T, D)
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var x = Rms(h, p + "input_layernorm.weight");
            var q = Lin(x, p + "self_attn.q_proj");   // (T, H*d)
            var k = Lin(x, p + "self_attn.k_proj");   // (T, Hkv*d)
            var v = Lin(x, p + "self_attn.v_proj");
            var heads = new List<Tensor>();
            for (int head = 0; head < H; head++)
            {
                int g = head / (H / Hkv);
                var qh = Rope(q[.., (head * d)..((head + 1) * d)]);
                var kh = Rope(k[.., (g * d)..((g + 1) * d)]);
                var vh = v[.., (g * d)..((g + 1) * d)];
                var scores = qh.matmul(kh.t()) / Math.Sqrt(d);          // (T, T)
                for (int i = 0; i < T; i++)
                    for (int j = 0; j < T; j++)
                        if (j > i || (c.SlidingWindow is int win && i - j >= win)) scores[i, j] = double.NegativeInfinity;
                heads.Add(scores.softmax(-1).matmul(vh));
            }
            h = h + Lin(torch.cat(heads, 1), p + "self_attn.o_proj");
            x = Rms(h, p + "post_attention_layernorm.weight");
            h = h + Lin(nn.functional.silu(Lin(x, p + "mlp.gate_proj")) * Lin(x, p + "mlp.up_proj"), p + "mlp.down_proj");
        }
        h = Rms(h, "model.norm.weight");
        var head_ = c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
        var logits = h.matmul(head_.t());
        var result = new double[T, Vocab];
        var data = logits.data<double>().ToArray();
        for (int i = 0; i < T; i++) for (int j = 0; j < Vocab; j++) result[i, j] = data[i * Vocab + j];
        return result;
    }

    static readonly long[] Ids = [128000, 9906, 11, 856, 5679, 374, 19369, 13, 578, 4062, 14198, 39935]; // 12 > Mistral's window 5

    [Theory]
    [MemberData(nameof(Families))]
    public void Logits_equal_a_hand_written_forward(string family)
    {
        var dir = Kept(WriteFolder(family));
        using var model = HfModelFolder.Load(dir);
        model.eval();
        using var _ = torch.no_grad();
        using var logits = model.Forward(torch.tensor(Ids).unsqueeze(0), null);
        var got = logits[0].to(ScalarType.Float64).data<double>().ToArray();
        var expected = HandLogits(dir, Ids);
        double maxDiff = 0;
        for (int i = 0; i < Ids.Length; i++) for (int j = 0; j < Vocab; j++) maxDiff = Math.Max(maxDiff, Math.Abs(got[i * Vocab + j] - expected[i, j]));
        maxDiff.Should().BeLessThan(1e-4, family);

        // The family's specifics reached the model.
        var slots = model.LinearSlots.ToDictionary(s => s.Name);
        if (family == "llama3")
        {
            (slots["model.layers.0.self_attn.q_proj"].OutFeatures, slots["model.layers.0.self_attn.o_proj"].InFeatures).Should().Be((64L, 64L), "head_dim 16 x 4 heads");
            model.GetLinear("model.layers.1.mlp.down_proj").Bias.Should().NotBeNull();
            model.GetLinear("model.layers.1.self_attn.o_proj").Bias.Should().NotBeNull();
        }
        if (family == "qwen2")
        {
            model.GetLinear("model.layers.0.self_attn.k_proj").Bias.Should().NotBeNull();
            model.GetLinear("model.layers.0.self_attn.o_proj").Bias.Should().BeNull();
        }
        if (family == "mistral") model.Config.SlidingWindow.Should().Be(5);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Kv_cached_decoding_equals_the_full_forward(string family)
    {
        var dir = Kept(WriteFolder(family));
        using var model = HfModelFolder.Load(dir);
        model.eval();
        using var _ = torch.no_grad();
        using var full = model.Forward(torch.tensor(Ids).unsqueeze(0), null);   // (1, T, V)
        using var cache = model.CreateKvCache(1);
        using var first = model.Forward(torch.tensor(Ids[..3]).unsqueeze(0), cache);   // a 3-token prompt, then one by one
        (first - full[.., ..3]).abs().max().item<float>().Should().BeLessThan(1e-4f);
        for (int i = 3; i < Ids.Length; i++)
        {
            using var step = model.Forward(torch.tensor(new[] { Ids[i] }).unsqueeze(0), cache);
            (step[0, 0] - full[0, i]).abs().max().item<float>().Should().BeLessThan(1e-4f, $"{family} position {i}");
        }
    }

    internal static (int Code, string Out, string Err) Peft(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(args, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    internal static double JsonLoss(string stdout) => JsonNode.Parse(stdout.TrimEnd().Split('\n')[^1])!["loss"]!.GetValue<double>();

    [Theory]
    [MemberData(nameof(Families))]
    public void Eval_generate_train_and_merge_run_through_the_CLI(string family)
    {
        var dir = Kept(WriteFolder(family));
        var work = Path.GetDirectoryName(dir)!;
        var evalData = Path.Combine(work, "eval.txt");
        File.WriteAllText(evalData, "Hello, my dog is cute.\n\nThe quick brown fox jumps over the lazy dog. 你好，世界！");

        var eval = Peft("eval", "--model", dir, "--data", evalData, "--json");
        eval.Code.Should().Be(0, eval.Err);
        var tokenizer = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
        using (var model = HfModelFolder.Load(dir))
        {
            var expected = Host.Evaluation.Evaluator.Evaluate(model, tokenizer, Host.Evaluation.EvalDocuments.Read(evalData));
            JsonLoss(eval.Out).Should().BeApproximately(expected.Loss, 1e-9);
        }

        var gen = Peft("generate", "--model", dir, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "4");
        gen.Code.Should().Be(0, gen.Err);
        gen.Out.Should().StartWith("Hello");

        var rows = Path.Combine(work, "rows.jsonl");
        File.WriteAllLines(rows, Enumerable.Range(0, 16).Select(i =>
            new JsonObject { ["instruction"] = $"Count to {i % 4 + 2}.", ["output"] = string.Join(" ", Enumerable.Range(1, i % 4 + 2)) }.ToJsonString()));
        var outDir = Path.Combine(work, "run");
        var config = Path.Combine(work, "train.json");
        File.WriteAllText(config, $$"""
            {
              "model": { "path": {{JsonValue.Create(dir).ToJsonString()}} },
              "method": { "name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"] },
              "data": { "path": {{JsonValue.Create(rows).ToJsonString()}}, "seq_len": 64, "validation_fraction": 0.25 },
              "training": { "seed": 3, "batch_size": 4, "max_steps": 6, "learning_rate": 0.01, "eval_every": 6, "eval_batches": 2, "log_every": 1, "num_threads": 1 },
              "output": { "dir": {{JsonValue.Create(outDir).ToJsonString()}} }
            }
            """);
        var train = Peft("train", "--config", config);
        train.Code.Should().Be(0, train.Err + train.Out);
        var adapter = Path.Combine(outDir, "adapter");
        var keys = Safetensors.ReadHeader(Path.Combine(adapter, "adapter_model.safetensors")).Tensors.Select(t => t.Name).ToList();
        keys.Should().NotBeEmpty().And.OnlyContain(k => k.Contains(".lora_A.") || k.Contains(".lora_B."), "PEFT semantics: the bias stays in the base layer");

        var merged = Path.Combine(work, "merged");
        var merge = Peft("merge", "--model", dir, "--adapter", adapter, "--out", merged);
        merge.Code.Should().Be(0, merge.Err);
        Directory.GetFiles(merged).Select(Path.GetFileName).Should().Contain(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
        // The same architecture comes back, in the base folder's dtype (bf16, as PEFT's merge_and_unload keeps the dtype).
        LlamaConfig.Load(Path.Combine(merged, "config.json")).ToJson("bfloat16").Should().Be(LlamaConfig.Load(Path.Combine(dir, "config.json")).ToJson("bfloat16"));
        JsonNode.Parse(File.ReadAllText(Path.Combine(merged, "config.json")))!["torch_dtype"]!.GetValue<string>().Should().Be("bfloat16");
        Safetensors.ReadHeader(Path.Combine(merged, "model.safetensors")).Tensors.Should().OnlyContain(t => t.DType == "BF16");
        var withAdapter = JsonLoss(Peft("eval", "--model", dir, "--adapter", adapter, "--data", evalData, "--json").Out);
        var mergedEval = Peft("eval", "--model", merged, "--data", evalData, "--json");
        mergedEval.Code.Should().Be(0, mergedEval.Err);
        // W + s·BA rounded once to bf16 (relative error ≤ 2^-9 per weight): the loss moves by about 1e-4 of itself.
        JsonLoss(mergedEval.Out).Should().BeApproximately(withAdapter, 2e-3);
        // --dtype float32 keeps the merged weights unrounded: the loss of the adapter on the base, to 1e-4.
        var merged32 = Path.Combine(work, "merged32");
        Peft("merge", "--model", dir, "--adapter", adapter, "--out", merged32, "--dtype", "float32").Code.Should().Be(0);
        Safetensors.ReadHeader(Path.Combine(merged32, "model.safetensors")).Tensors.Should().OnlyContain(t => t.DType == "F32");
        JsonLoss(Peft("eval", "--model", merged32, "--data", evalData, "--json").Out).Should().BeApproximately(withAdapter, 1e-4);
        Math.Abs(withAdapter - JsonLoss(eval.Out)).Should().BeGreaterThan(1e-6, "training changed the model");

        // The biases of the base are written unchanged by the merge.
        using var baseBias = Safetensors.Load(Path.Combine(dir, "model.safetensors"), n => n == "model.layers.0.self_attn.q_proj.bias").Values.SingleOrDefault();
        using var mergedBias = Safetensors.Load(Path.Combine(merged, "model.safetensors"), n => n == "model.layers.0.self_attn.q_proj.bias").Values.SingleOrDefault();
        if (family == "mistral") (baseBias, mergedBias).Should().Be((null, null));
        else mergedBias!.to(ScalarType.Float32).allclose(baseBias!.to(ScalarType.Float32), rtol: 0, atol: 0).Should().BeTrue();
    }

    [Fact]
    public void Llama3_rope_scaling_matches_HF_per_band()
    {
        // Llama 3.1 8B: head_dim 128, theta 500000, factor 8, low 1, high 4, original 8192. Golden values from HF's
        // _compute_llama3_parameters evaluated in float64 with Python (math module), indices from each band.
        var s = new Llama3RopeScaling(8.0, 1.0, 4.0, 8192);
        var inv = s.InverseFrequencies(128, 500000.0);
        var plain = Llama3RopeScaling.PlainInverseFrequencies(128, 500000.0);
        double highWl = 8192 / 4.0, lowWl = 8192 / 1.0;
        int high = 0, medium = 0, low = 0;
        for (int i = 0; i < 64; i++)
        {
            double wl = 2 * Math.PI / plain[i];
            if (wl < highWl) { high++; inv[i].Should().Be(plain[i]); }
            else if (wl > lowWl) { low++; inv[i].Should().BeApproximately(plain[i] / 8, 1e-18); }
            else
            {
                medium++;
                double smooth = (8192 / wl - 1) / (4 - 1);
                inv[i].Should().BeApproximately((1 - smooth) * plain[i] / 8 + smooth * plain[i], 1e-15);
            }
        }
        (high, medium, low).Should().Be((29, 6, 29), "HF's bands for Llama 3.1 (counted with the same thresholds in Python)");
        foreach (var (i, golden) in GoldenLlama31) inv[i].Should().BeApproximately(golden, Math.Abs(golden) * 1e-12, $"inv_freq[{i}]");
    }

    /// <summary>HF's llama3 inverse frequencies for Llama 3.1 8B, computed in Python (float64).</summary>
    static readonly (int Index, double Value)[] GoldenLlama31 =
    [
        (0, 1.0), (10, 0.12868737343265052),                                              // high: unchanged
        (30, 0.0013718935677611381), (31, 0.0008567514129196321), (35, 9.556212353964683e-05), // medium: smoothed (29..34), low from 35
        (40, 3.428102195952591e-05), (50, 4.411534674558404e-06), (63, 3.068925988914511e-07), // low: / factor
    ];
}
