namespace Peft.Abstractions.Model;

/// <summary>What a linear slot computes inside a decoder (so plugins choose targets without parsing names).</summary>
public enum LinearKind
{
    AttentionQuery,
    AttentionKey,
    AttentionValue,
    AttentionOutput,
    MlpGate,
    MlpUp,
    MlpDown,
    /// <summary>The output head (<c>lm_head</c>): excluded by <c>all-linear</c> and, by default, by quantizers.</summary>
    OutputHead,
    /// <summary>A linear the model has that none of the kinds above describes.</summary>
    Other,
}

/// <summary>
/// One linear-layer slot of a model, as the model describes it: the HF module name
/// (<c>model.layers.3.self_attn.q_proj</c>), its last name component (<c>q_proj</c>, what PEFT's
/// <c>target_modules</c> entries match), the decoder layer it belongs to (null for the head), its kind, and its
/// shape (x (…, in) → y (…, out)). The model is the only place that knows its layout; methods, quantizers,
/// optimizer strategies, hooks and the planner read it from here.
/// </summary>
public sealed record LinearSlot(string Name, string ShortName, int? LayerIndex, LinearKind Kind, long InFeatures, long OutFeatures)
{
    /// <summary>Attention or MLP projection inside a decoder layer (GaLore's and the quantizers' default targets).</summary>
    public bool IsDecoderProjection => LayerIndex is not null && Kind is not (LinearKind.OutputHead or LinearKind.Other);

    public long Parameters => InFeatures * OutFeatures;
}
