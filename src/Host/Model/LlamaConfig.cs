using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Abstractions.Model;
using Peft.Host.Formats;

namespace Peft.Host.Model;

/// <summary>
/// The architecture of a Llama-family decoder, as HF's <c>config.json</c> spells it for <c>model_type</c>
/// <c>llama</c> (LlamaForCausalLM: Llama 2/3.x, TinyLlama, SmolLM2), <c>qwen2</c> (Qwen2ForCausalLM: Qwen2/2.5, the
/// same decoder with biases on q/k/v) and <c>mistral</c> (MistralForCausalLM: Llama's decoder with an optional
/// sliding attention window). Another <c>model_type</c> or a <c>rope_scaling</c> other than <c>llama3</c> is refused.
/// Keys this class does not model (<c>transformers_version</c>, <c>initializer_range</c>, <c>pad_token_id</c>...)
/// are kept verbatim in <see cref="OtherKeys"/> and written back by <see cref="ToJson"/>.
/// Defaults are HF <c>LlamaConfig</c>'s for the optional keys.
/// </summary>
public sealed class LlamaConfig
{
    public const string Llama = "llama", Qwen2 = "qwen2", Mistral = "mistral";
    static readonly Dictionary<string, string> ArchitectureOf = new(StringComparer.Ordinal)
    {
        [Llama] = "LlamaForCausalLM", [Qwen2] = "Qwen2ForCausalLM", [Mistral] = "MistralForCausalLM",
    };

    /// <summary>HF's <c>model_type</c>: llama, qwen2 or mistral.</summary>
    public string ModelType { get; init; } = Llama;
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    /// <summary>Grouped-query attention: heads of K/V; defaults to <see cref="NumAttentionHeads"/>.</summary>
    public int NumKeyValueHeads { get; init; }
    public int VocabSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public bool TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; } = 1;
    /// <summary>One or more end-of-sequence ids (Llama 3 configs list several).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [2];
    /// <summary>Bias on all four attention projections (Llama's <c>attention_bias</c>).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Bias on q/k/v only (Qwen2, always; o_proj has none).</summary>
    public bool QkvBias { get; init; }
    /// <summary>config.json's <c>head_dim</c> when it is given; <see cref="HeadDim"/> otherwise hidden/heads.</summary>
    public int? ExplicitHeadDim { get; init; }
    /// <summary><c>rope_scaling</c> of type <c>llama3</c>, or null for plain rotary embeddings.</summary>
    public Llama3RopeScaling? RopeScaling { get; init; }
    /// <summary>
    /// Sliding-window attention: each position attends to itself and the window−1 positions before it (Mistral's
    /// <c>sliding_window</c>; Qwen2's when <c>use_sliding_window</c> is true). Null: full causal attention.
    /// </summary>
    public int? SlidingWindow { get; init; }
    public bool MlpBias { get; init; }
    public string HiddenAct { get; init; } = "silu";
    /// <summary>The dtype the weights were saved in (<c>float32</c>, <c>bfloat16</c>, <c>float16</c>), or null.</summary>
    public string? TorchDtype { get; init; }
    public double InitializerRange { get; init; } = 0.02;

    /// <summary>Every other key of the file, written back unchanged.</summary>
    public JsonObject OtherKeys { get; init; } = new();

    public int HeadDim => ExplicitHeadDim ?? HiddenSize / NumAttentionHeads;
    /// <summary>Width of all query heads together (q_proj's output, o_proj's input); hidden_size unless head_dim is explicit.</summary>
    public int QueryDim => HeadDim * NumAttentionHeads;
    public int KeyValueDim => HeadDim * NumKeyValueHeads;

    public ModelShape ToShape() => new(HiddenSize, NumHiddenLayers, NumAttentionHeads, NumKeyValueHeads,
        IntermediateSize, VocabSize, MaxPositionEmbeddings, TieWordEmbeddings, ExplicitHeadDim);

    static readonly HashSet<string> ModelledKeys = new(StringComparer.Ordinal)
    {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "attention_bias", "mlp_bias", "hidden_act", "torch_dtype", "dtype",
        "initializer_range", "architectures", "model_type", "rope_scaling", "head_dim",
    };
    // sliding_window / use_sliding_window are read but stay in OtherKeys, so they are written back as they were.

    public static LlamaConfig Load(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: file not found (an HF model folder needs config.json)");
        return FromJson(File.ReadAllText(path), path);
    }

    /// <summary>Parse and validate; <paramref name="source"/> (a path) prefixes every error message.</summary>
    public static LlamaConfig FromJson(string json, string source)
    {
        JsonObject root;
        try { root = JsonNode.Parse(json)?.AsObject() ?? throw new JsonException("empty document"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new PeftFormatException($"{source}: not a JSON object ({e.Message})"); }

        var r = new Reader(root, source);
        var modelType = r.String("model_type", null) ?? Llama;
        if (!ArchitectureOf.TryGetValue(modelType, out var architecture))
            throw r.Bad("model_type", $"model type '{modelType}' is not supported (supported: {string.Join(", ", ArchitectureOf.Keys)})");
        if (root["architectures"] is JsonNode arch)
        {
            if (arch is not JsonArray list || list.Any(x => x is not JsonValue v || !v.TryGetValue<string>(out _)))
                throw r.Bad("architectures", "expected a list of strings");
            if (!list.Any(x => string.Equals(x!.GetValue<string>(), architecture, StringComparison.OrdinalIgnoreCase)))
                throw r.Bad("architectures", $"model_type '{modelType}' needs {architecture} (other heads, e.g. sequence classification, are not supported)");
        }
        var ropeScaling = Llama3RopeScaling.FromJson(root["rope_scaling"], r);
        int? slidingWindow = null;
        if (modelType == Qwen2 && r.Bool("use_sliding_window", false))
            throw r.Bad("use_sliding_window", "Qwen2's per-layer sliding window (max_window_layers) is not supported; released Qwen2.5 configs set it to false");
        if (modelType == Mistral && root["sliding_window"] is JsonNode sw && sw.GetValueKind() != JsonValueKind.Null)
            slidingWindow = r.PositiveInt("sliding_window", null);

        int heads = r.PositiveInt("num_attention_heads", null);
        var other = new JsonObject();
        foreach (var (k, v) in root)
            if (!ModelledKeys.Contains(k)) other[k] = v?.DeepClone();

        var config = new LlamaConfig
        {
            HiddenSize = r.PositiveInt("hidden_size", null),
            IntermediateSize = r.PositiveInt("intermediate_size", null),
            NumHiddenLayers = r.PositiveInt("num_hidden_layers", null),
            NumAttentionHeads = heads,
            NumKeyValueHeads = r.PositiveInt("num_key_value_heads", heads),
            VocabSize = r.PositiveInt("vocab_size", null),
            MaxPositionEmbeddings = r.PositiveInt("max_position_embeddings", 2048),
            RmsNormEps = r.PositiveDouble("rms_norm_eps", 1e-6),
            RopeTheta = r.PositiveDouble("rope_theta", 10000.0),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            BosTokenId = r.OptionalTokenIds("bos_token_id", [1])?.First(),
            EosTokenIds = r.OptionalTokenIds("eos_token_id", [2]) ?? [],
            ModelType = modelType,
            AttentionBias = modelType == Llama && r.Bool("attention_bias", false),
            QkvBias = modelType == Qwen2,
            RopeScaling = ropeScaling,
            SlidingWindow = slidingWindow,
            MlpBias = modelType == Llama && r.Bool("mlp_bias", false),
            HiddenAct = r.String("hidden_act", "silu")!,
            TorchDtype = r.String("torch_dtype", null) ?? r.String("dtype", null),
            InitializerRange = r.PositiveDouble("initializer_range", 0.02),
            OtherKeys = other,
        };
        if (root["head_dim"] is JsonNode hd && hd.GetValueKind() != JsonValueKind.Null)
        {
            int headDim = r.PositiveInt("head_dim", null);
            if (modelType == Qwen2 && headDim * heads != config.HiddenSize)
                throw r.Bad("head_dim", $"Qwen2 computes head_dim as hidden_size / num_attention_heads = {config.HiddenSize}/{heads}");
            if (headDim * heads != config.HiddenSize) config = config.With(explicitHeadDim: headDim);
        }
        config.Validate(source);
        return config;
    }

    /// <summary>Check the relations between values (also for configs built in code). Throws naming the key and value.</summary>
    public void Validate(string source)
    {
        PeftFormatException Bad(string key, object value, string problem) =>
            new($"{source}: key '{key}' has value {Format(value)}: {problem}");
        foreach (var (key, value) in new (string, int)[]
                 {
                     ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize), ("num_hidden_layers", NumHiddenLayers),
                     ("num_attention_heads", NumAttentionHeads), ("num_key_value_heads", NumKeyValueHeads),
                     ("vocab_size", VocabSize), ("max_position_embeddings", MaxPositionEmbeddings),
                 })
            if (value <= 0) throw Bad(key, value, "must be a positive integer");
        if (!ArchitectureOf.ContainsKey(ModelType))
            throw Bad("model_type", ModelType, $"model type '{ModelType}' is not supported (supported: {string.Join(", ", ArchitectureOf.Keys)})");
        if (ExplicitHeadDim is int hd)
        {
            if (hd <= 0) throw Bad("head_dim", hd, "must be a positive integer");
            if (hd % 2 != 0) throw Bad("head_dim", hd, "is odd (rotary embeddings need an even head dimension)");
        }
        else
        {
            if (HiddenSize % NumAttentionHeads != 0)
                throw Bad("num_attention_heads", NumAttentionHeads, $"must divide hidden_size {HiddenSize}");
            if (HeadDim % 2 != 0)
                throw Bad("num_attention_heads", NumAttentionHeads, $"gives an odd head dimension {HeadDim} (rotary embeddings need an even one)");
        }
        if (SlidingWindow is <= 0) throw Bad("sliding_window", SlidingWindow, "must be a positive integer");
        RopeScaling?.Validate(source, HeadDim);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw Bad("num_key_value_heads", NumKeyValueHeads, $"must divide num_attention_heads {NumAttentionHeads}");
        if (!(RmsNormEps > 0) || !double.IsFinite(RmsNormEps)) throw Bad("rms_norm_eps", RmsNormEps, "must be a positive number");
        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta)) throw Bad("rope_theta", RopeTheta, "must be a positive number");
        if (HiddenAct != "silu")
            throw Bad("hidden_act", HiddenAct, "unsupported activation: only 'silu' (the SwiGLU MLP of Llama) is supported");
        if (BosTokenId is int bos && (bos < 0 || bos >= VocabSize)) throw Bad("bos_token_id", bos, $"must be in [0, vocab_size {VocabSize})");
        foreach (var eos in EosTokenIds)
            if (eos < 0 || eos >= VocabSize) throw Bad("eos_token_id", eos, $"must be in [0, vocab_size {VocabSize})");
        if (TorchDtype is not null && TorchDtype is not ("float32" or "bfloat16" or "float16"))
            throw Bad("torch_dtype", TorchDtype, "expected 'float32', 'bfloat16' or 'float16'");
    }

    /// <summary>HF's <c>config.json</c> text: keys sorted, indent 2 (as <c>save_pretrained</c> writes it).</summary>
    public string ToJson(string? torchDtype = null)
    {
        var o = new JsonObject();
        foreach (var (k, v) in OtherKeys) o[k] = v?.DeepClone();
        o["architectures"] = new JsonArray(ArchitectureOf[ModelType]);
        o["model_type"] = ModelType;
        o["hidden_size"] = HiddenSize;
        o["intermediate_size"] = IntermediateSize;
        o["num_hidden_layers"] = NumHiddenLayers;
        o["num_attention_heads"] = NumAttentionHeads;
        o["num_key_value_heads"] = NumKeyValueHeads;
        if (ModelType != Qwen2) o["head_dim"] = HeadDim;
        o["vocab_size"] = VocabSize;
        o["max_position_embeddings"] = MaxPositionEmbeddings;
        o["rms_norm_eps"] = RmsNormEps;
        o["rope_theta"] = RopeTheta;
        o["rope_scaling"] = RopeScaling?.ToJson();
        if (ModelType == Mistral) o["sliding_window"] = SlidingWindow;
        o["tie_word_embeddings"] = TieWordEmbeddings;
        o["bos_token_id"] = BosTokenId;
        o["eos_token_id"] = EosTokenIds.Count == 1 ? EosTokenIds[0] : new JsonArray(EosTokenIds.Select(x => (JsonNode)x).ToArray());
        if (ModelType == Llama)
        {
            o["attention_bias"] = AttentionBias;
            o["mlp_bias"] = MlpBias;
        }
        o["hidden_act"] = HiddenAct;
        o["initializer_range"] = InitializerRange;
        o["torch_dtype"] = torchDtype ?? TorchDtype ?? "float32";
        var sorted = new JsonObject();
        foreach (var (k, v) in o.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sorted[k] = v?.DeepClone();
        return sorted.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    /// <summary>A copy with an explicit head_dim (init-only properties cannot be set after construction).</summary>
    LlamaConfig With(int? explicitHeadDim) => new()
    {
        ModelType = ModelType, HiddenSize = HiddenSize, IntermediateSize = IntermediateSize, NumHiddenLayers = NumHiddenLayers,
        NumAttentionHeads = NumAttentionHeads, NumKeyValueHeads = NumKeyValueHeads, VocabSize = VocabSize,
        MaxPositionEmbeddings = MaxPositionEmbeddings, RmsNormEps = RmsNormEps, RopeTheta = RopeTheta,
        TieWordEmbeddings = TieWordEmbeddings, BosTokenId = BosTokenId, EosTokenIds = EosTokenIds,
        AttentionBias = AttentionBias, QkvBias = QkvBias, MlpBias = MlpBias, HiddenAct = HiddenAct, TorchDtype = TorchDtype,
        InitializerRange = InitializerRange, OtherKeys = OtherKeys, RopeScaling = RopeScaling, SlidingWindow = SlidingWindow,
        ExplicitHeadDim = explicitHeadDim,
    };

    static string Format(object value) => value switch
    {
        string s => $"'{s}'",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "null",
    };

    /// <summary>Typed access to the JSON keys with errors that name the key and the offending value.</summary>
    internal sealed class Reader(JsonObject root, string source)
    {
        public PeftFormatException Bad(string key, string problem) =>
            new($"{source}: key '{key}' has value {root[key]?.ToJsonString() ?? "null"}: {problem}");

        JsonValue? Value(string key, bool required)
        {
            var node = root[key];
            if (node is null || node.GetValueKind() == JsonValueKind.Null)
            {
                if (required) throw new PeftFormatException($"{source}: required key '{key}' is missing");
                return null;
            }
            return node as JsonValue ?? throw Bad(key, "expected a single value");
        }

        public int PositiveInt(string key, int? fallback)
        {
            var v = Value(key, fallback is null);
            if (v is null) return fallback!.Value;
            if (v.GetValueKind() != JsonValueKind.Number) throw Bad(key, "expected a positive integer");
            double d = v.GetValue<double>();
            if (d != Math.Floor(d) || d <= 0 || d > int.MaxValue) throw Bad(key, "must be a positive integer");
            return (int)d;
        }

        public double PositiveDouble(string key, double fallback)
        {
            var v = Value(key, false);
            if (v is null) return fallback;
            if (v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue<double>(out var d) || !double.IsFinite(d) || d <= 0)
                throw Bad(key, "expected a positive number");
            return d;
        }

        public bool Bool(string key, bool fallback)
        {
            var v = Value(key, false);
            if (v is null) return fallback;
            return v.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, "expected true or false"),
            };
        }

        public string? String(string key, string? fallback)
        {
            var v = Value(key, false);
            if (v is null) return fallback;
            if (v.GetValueKind() != JsonValueKind.String) throw Bad(key, "expected a string");
            return v.GetValue<string>();
        }

        /// <summary>An id or a list of ids; absent -> <paramref name="fallback"/>, explicit null -> null.</summary>
        public IReadOnlyList<int>? OptionalTokenIds(string key, IReadOnlyList<int> fallback)
        {
            if (!root.ContainsKey(key)) return fallback;
            var node = root[key];
            if (node is null) return null;
            List<JsonNode?> items = node is JsonArray a ? a.ToList() : new List<JsonNode?> { node };
            var ids = new List<int>();
            foreach (var item in items)
            {
                if (item is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue<int>(out var id) || id < 0)
                    throw Bad(key, "expected a non-negative integer token id or a list of them");
                ids.Add(id);
            }
            if (ids.Count == 0) throw Bad(key, "expected at least one token id");
            return ids;
        }
    }
}
