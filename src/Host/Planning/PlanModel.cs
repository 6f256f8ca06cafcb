using Peft.Abstractions.Model;
using Peft.Host.Cli;
using Peft.Host.Model;

namespace Peft.Host.Planning;

/// <summary>
/// The model the planner plans for: its architecture (HF config fields), whether its linears carry biases, and,
/// for the seed's arithmetic, the nominal size the seed multiplies by (70e9 for "a 70B model").
/// </summary>
public sealed record PlanModel(string Name, ModelShape Shape, int HeadDim, bool AttentionBias = false, bool MlpBias = false, double? NominalParameters = null,
                              bool QkvBias = false)
{
    /// <summary>The linear slots of the model, from the host's Llama layout (the one place that knows it).</summary>
    public IReadOnlyList<LinearSlot> Slots => _slots ??= LlamaLayout.Slots(Shape, HeadDim);
    IReadOnlyList<LinearSlot>? _slots;

    /// <summary>
    /// Every parameter tensor of the model (HF names, shapes, decoder layer): embed_tokens, per layer the seven
    /// projections (+ biases when the config has them) and the two RMSNorm weights, the final norm, and lm_head
    /// unless tied to the embeddings.
    /// </summary>
    public IReadOnlyList<ModelTensor> Tensors => _tensors ??= BuildTensors();
    IReadOnlyList<ModelTensor>? _tensors;

    public long TotalParameters => Tensors.Sum(t => t.Elements);

    IReadOnlyList<ModelTensor> BuildTensors()
    {
        long d = Shape.HiddenSize;
        var list = new List<ModelTensor> { new("model.embed_tokens.weight", [Shape.VocabSize, d], null, null) };
        var byLayer = Slots.Where(s => s.LayerIndex is not null).GroupBy(s => s.LayerIndex!.Value);
        foreach (var layer in byLayer)
        {
            foreach (var slot in layer)
            {
                list.Add(new(slot.Name + ".weight", [slot.OutFeatures, slot.InFeatures], layer.Key, slot));
                bool bias = slot.Kind switch
                {
                    LinearKind.AttentionQuery or LinearKind.AttentionKey or LinearKind.AttentionValue => AttentionBias || QkvBias,   // Qwen2: q/k/v only
                    LinearKind.AttentionOutput => AttentionBias,
                    _ => MlpBias,
                };
                if (bias) list.Add(new(slot.Name + ".bias", [slot.OutFeatures], layer.Key, null));
            }
            list.Add(new($"model.layers.{layer.Key}.input_layernorm.weight", [d], layer.Key, null));
            list.Add(new($"model.layers.{layer.Key}.post_attention_layernorm.weight", [d], layer.Key, null));
        }
        list.Add(new("model.norm.weight", [d], null, null));
        if (!Shape.TieWordEmbeddings)
        {
            var head = Slots.First(s => s.Kind == LinearKind.OutputHead);
            list.Add(new(head.Name + ".weight", [head.OutFeatures, head.InFeatures], null, head));
        }
        return list;
    }

    /// <summary>A model from an HF <c>config.json</c> (or a folder holding one).</summary>
    public static PlanModel FromConfigFile(string pathOrFolder)
    {
        var path = Directory.Exists(pathOrFolder) ? Path.Combine(pathOrFolder, HfModelFolder.ConfigFile) : pathOrFolder;
        if (!File.Exists(path)) throw new CliException($"'{pathOrFolder}' is neither a preset ({string.Join(", ", ModelPresets.Names)}) nor a config.json or a model folder holding one");
        var config = LlamaConfig.Load(path);
        return FromConfig(config, Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) ?? path);
    }

    public static PlanModel FromConfig(LlamaConfig config, string name) =>
        new(name, config.ToShape(), config.HeadDim, config.AttentionBias, config.MlpBias, QkvBias: config.QkvBias);
}

/// <summary>One parameter tensor of the model; <see cref="Slot"/> is set for linear weights.</summary>
public sealed record ModelTensor(string Name, long[] Shape, int? LayerIndex, LinearSlot? Slot)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>Built-in model shapes (HF config.json values of the released checkpoints) and the seed's 70B.</summary>
public static class ModelPresets
{
    static readonly Dictionary<string, (PlanModel Model, string Description)> All = new(StringComparer.OrdinalIgnoreCase)
    {
        ["llama2-7b"] = (Make("llama2-7b", 4096, 32, 32, 32, 11008, 32000, 4096, 7e9), "Llama-2 7B (meta-llama/Llama-2-7b-hf)"),
        ["llama2-13b"] = (Make("llama2-13b", 5120, 40, 40, 40, 13824, 32000, 4096, 13e9), "Llama-2 13B (meta-llama/Llama-2-13b-hf)"),
        ["llama2-70b"] = (Make("llama2-70b", 8192, 80, 64, 8, 28672, 32000, 4096, 70e9), "Llama-2 70B, grouped-query K/V (8 heads)"),
        ["llama3-8b"] = (Make("llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, 8e9), "Llama-3 8B, grouped-query K/V (8 heads), 128k vocabulary"),
        ["llama3-70b"] = (Make("llama3-70b", 8192, 80, 64, 8, 28672, 128256, 8192, 70e9), "Llama-3 70B, grouped-query K/V (8 heads), 128k vocabulary"),
        // The seed's model: d_model 8192 x 80 layers, every attention matrix 8192 x 8192 (it ignores GQA), "70B".
        ["seed-70b"] = (Make("seed-70b", 8192, 80, 64, 64, 28672, 32000, 4096, 70e9), "the seed's 70B: d_model 8192, 80 layers, no GQA"),
    };

    static PlanModel Make(string name, int hidden, int layers, int heads, int kvHeads, int inter, int vocab, int maxPos, double nominal) =>
        new(name, new(hidden, layers, heads, kvHeads, inter, vocab, maxPos, TieWordEmbeddings: false), hidden / heads, NominalParameters: nominal);

    public static IReadOnlyCollection<string> Names => All.Keys;

    public static string Describe(string name) => All[name].Description;

    public static PlanModel? Find(string name) => All.TryGetValue(name, out var p) ? p.Model : null;

    /// <summary>A preset name, else an HF config.json or a model folder.</summary>
    public static PlanModel Resolve(string presetOrPath) =>
        Find(presetOrPath) ?? PlanModel.FromConfigFile(presetOrPath);
}
