using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Fakes;

/// <summary>
/// The linear layers of a Llama-architecture model, named as in HF (<c>model.layers.3.self_attn.q_proj</c>,
/// <c>lm_head</c>), with random small weights, behind <see cref="IPeftModel"/>. No attention or norms: methods
/// only see slots. <paramref name="kinds"/> picks which projections each layer gets.
/// </summary>
public sealed class FakeLlamaModel : IPeftModel
{
    public static readonly string[] AllKinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    readonly Dictionary<string, ILinearLayer> _slots = new(StringComparer.Ordinal);
    readonly List<LinearSlot> _list = new();

    public FakeLlamaModel(ModelShape shape, IEnumerable<string>? kinds = null, bool withHead = true, double scale = 0.05)
    {
        Shape = shape;
        var chosen = (kinds ?? AllKinds).ToHashSet();
        foreach (var slot in SlotsFor(shape))
        {
            if (slot.Kind == LinearKind.OutputHead ? !withHead : !chosen.Any(k => slot.Name.EndsWith("." + k, StringComparison.Ordinal))) continue;
            _slots[slot.Name] = TestLinear.Random(slot.InFeatures, slot.OutFeatures, scale);
            _list.Add(slot);
        }
    }

    /// <summary>The slots of a Llama decoder with <paramref name="shape"/> (the test's own copy of the host's layout).</summary>
    public static IReadOnlyList<LinearSlot> SlotsFor(ModelShape shape)
    {
        long h = shape.HiddenSize, kv = (long)shape.NumKeyValueHeads * shape.HeadDim, inter = shape.IntermediateSize;
        var list = new List<LinearSlot>();
        for (int l = 0; l < shape.NumHiddenLayers; l++)
        {
            foreach (var kind in AllKinds)
            {
                var (i, o, k) = kind switch
                {
                    "self_attn.q_proj" => (h, h, LinearKind.AttentionQuery),
                    "self_attn.o_proj" => (h, h, LinearKind.AttentionOutput),
                    "self_attn.k_proj" => (h, kv, LinearKind.AttentionKey),
                    "self_attn.v_proj" => (h, kv, LinearKind.AttentionValue),
                    "mlp.gate_proj" => (h, inter, LinearKind.MlpGate),
                    "mlp.up_proj" => (h, inter, LinearKind.MlpUp),
                    _ => (inter, h, LinearKind.MlpDown),
                };
                list.Add(new LinearSlot($"model.layers.{l}.{kind}", kind[(kind.IndexOf('.') + 1)..], l, k, i, o));
            }
        }
        list.Add(new LinearSlot("lm_head", "lm_head", null, LinearKind.OutputHead, h, shape.VocabSize));
        return list;
    }

    /// <summary>A tiny Llama: hidden 16, 3 layers, 4 heads, 2 KV heads (k/v 16 -> 8), intermediate 24, vocab 32.</summary>
    public static FakeLlamaModel Tiny(int layers = 3) => new(new ModelShape(16, layers, 4, 2, 24, 32, 64, false));

    /// <summary>SmolLM-135M's shapes: hidden 576, 30 layers, 9 heads, 3 KV heads (k/v 576 -> 192), intermediate 1536.</summary>
    public static readonly ModelShape SmolLM135M = new(576, 30, 9, 3, 1536, 49152, 2048, true);

    public ModelShape Shape { get; }
    public IReadOnlyList<LinearSlot> LinearSlots => _list;
    public IReadOnlyList<string> LinearLayerNames => _list.Select(s => s.Name).ToList();
    public string OutputHeadName => "lm_head";
    public ILinearLayer GetLinear(string name) => _slots.TryGetValue(name, out var l) ? l : throw new KeyNotFoundException($"no linear layer '{name}'");
    public void SetLinear(string name, ILinearLayer layer)
    {
        if (!_slots.ContainsKey(name)) throw new KeyNotFoundException($"no linear layer '{name}'");
        _slots[name] = layer;
    }

    public int? LayerIndexOf(string name)
    {
        const string prefix = "model.layers.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return null;
        var end = name.IndexOf('.', prefix.Length);
        return int.TryParse(end < 0 ? name[prefix.Length..] : name[prefix.Length..end], out var i) ? i : null;
    }

    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters()
    {
        foreach (var name in _list.Select(s => s.Name))
            foreach (var (p, param) in _slots[name].Module.named_parameters())
                yield return ($"{name}.{p}", param);
    }

    public Device Device => torch.CPU;
}
