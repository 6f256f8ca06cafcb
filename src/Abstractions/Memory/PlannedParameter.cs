namespace Peft.Abstractions.Memory;

/// <summary>
/// A trainable tensor as the memory planner describes it before any tensor exists: its HF name, its shape, the
/// decoder layer it belongs to (null for embeddings, the final norm and the head) and the bytes per element the
/// optimizer works in (fp32 master weights in mixed precision, else the parameter's own dtype).
/// </summary>
public sealed record PlannedParameter(string Name, IReadOnlyList<long> Shape, int? LayerIndex, int ElementBytes = 4)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// What an optimizer strategy holds for a set of trainable tensors, for the planner: its state (moments, step
/// counters), its projection matrices (GaLore), and how many gradient elements exist at the peak (null: every
/// trainable tensor's gradient at once; GaLore's layer-wise mode frees each gradient right after its update).
/// </summary>
public sealed record OptimizerMemoryEstimate(long StateBytes, long ProjectionBytes = 0, long? HeldGradientElements = null);

/// <summary>
/// What a training hook changes in the plan: how many decoder layers hold gradients and optimizer state at once
/// (LISA: k of L). Under a PEFT method, <paramref name="TrainsLayerWeights"/> says the hook also trains the active
/// layers' own weights (their adapters frozen meanwhile, the other layers' adapters training: LISA + LoRA), and
/// <paramref name="TrainsOutsideLayers"/> that the parameters outside the decoder layers (embeddings, final norm,
/// head) train throughout.
/// </summary>
public sealed record HookMemoryEstimate(int ActiveDecoderLayers, bool TrainsLayerWeights = false, bool TrainsOutsideLayers = false);
