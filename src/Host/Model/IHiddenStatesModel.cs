using Peft.Abstractions.Model;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A causal LM whose output head can be applied apart from its body, so the loss can run the head over chunks of
/// tokens (<see cref="Training.ChunkedLinearCrossEntropy"/>) and the (tokens × vocab) logits never exist whole:
/// <code>
///   logits = OutputHead(HiddenStates(ids))      (B, T, D) → (B, T, V)
/// </code>
/// </summary>
public interface IHiddenStatesModel
{
    /// <summary>input_ids (batch, seq) int64 -> the body's final (normalized) hidden states (batch, seq, hidden) fp32.</summary>
    Tensor HiddenStates(Tensor inputIds);

    /// <summary>The layer in the head slot now (plain, tied, or wrapped by an adapter).</summary>
    ILinearLayer OutputHead { get; }
}

/// <summary>
/// A bias-free linear layer whose product is exactly <c>x W^T</c> with one dense weight: the fused chunked loss
/// then needs only W (and accumulates W's gradient itself when W trains). An adapter-wrapped head is not one.
/// </summary>
public interface IDenseLinear
{
    /// <summary>W (out, in) in <paramref name="dtype"/>: the parameter itself, or a differentiable cast of it.</summary>
    Tensor ComputeWeight(ScalarType dtype);

    /// <summary>W (out, in) as it is stored (the parameter itself, perhaps bf16): a frozen low-precision head is read in blocks, never cast whole.</summary>
    Tensor StoredWeight { get; }
}
