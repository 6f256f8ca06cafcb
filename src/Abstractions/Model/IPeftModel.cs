using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Abstractions.Model;

/// <summary>
/// What a method, quantizer, optimizer strategy or hook sees of a model: its shape, its linear layers
/// addressed by HF module names (<c>model.layers.3.self_attn.q_proj</c>), and its parameters by HF names
/// (<c>model.layers.3.self_attn.q_proj.weight</c>).
/// </summary>
public interface IPeftModel
{
    ModelShape Shape { get; }

    /// <summary>Every linear layer slot, in model order, including the output head: name, short name, layer index, kind, shape.</summary>
    IReadOnlyList<LinearSlot> LinearSlots { get; }

    /// <summary>Names of every linear layer slot, in model order, including the output head.</summary>
    IReadOnlyList<string> LinearLayerNames => LinearSlots.Select(s => s.Name).ToList();

    /// <summary>HF name of the output head (<c>lm_head</c>); excluded by <c>all-linear</c>. With tied embeddings it is still listed.</summary>
    string OutputHeadName { get; }

    /// <summary>The layer currently in the slot (possibly already wrapped or quantized).</summary>
    ILinearLayer GetLinear(string name);

    /// <summary>
    /// Put <paramref name="layer"/> into the slot, replacing what is there. Ownership: the model owns what is in its
    /// slots; the replaced layer goes back to the caller, who either keeps it inside the new layer (an adapter
    /// keeps its base layer) or disposes it (a quantizer's caller frees the full-precision layer it replaced).
    /// </summary>
    void SetLinear(string name, ILinearLayer layer);

    /// <summary>
    /// Decoder layer index of a module or parameter name (<c>model.layers.3.mlp.up_proj</c> -> 3,
    /// <c>model.layers.3.self_attn.q_proj.lora_A.weight</c> -> 3), or null. Plugins call this rather than parse names.
    /// </summary>
    int? LayerIndexOf(string name);

    /// <summary>Every parameter, with its HF-style name (adapter parameters included once attached).</summary>
    IEnumerable<(string Name, Parameter Parameter)> NamedParameters();

    /// <summary>The device the model's tensors live on; plugins choose their compute path from it.</summary>
    Device Device { get; }
}

/// <summary>The architecture numbers of a decoder-only transformer (HF config.json fields).</summary>
public sealed record ModelShape(
    int HiddenSize,
    int NumHiddenLayers,
    int NumAttentionHeads,
    int NumKeyValueHeads,
    int IntermediateSize,
    int VocabSize,
    int MaxPositionEmbeddings,
    bool TieWordEmbeddings,
    int? ExplicitHeadDim = null)
{
    /// <summary>Width of one attention head: config.json's <c>head_dim</c> when given (Llama 3.2, Mistral Nemo), else hidden/heads.</summary>
    public int HeadDim => ExplicitHeadDim ?? HiddenSize / NumAttentionHeads;
}
