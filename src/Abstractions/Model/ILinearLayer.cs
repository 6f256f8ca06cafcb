using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Abstractions.Model;

/// <summary>
/// A linear map y = x W^T + b over the last dimension: x (..., in) -> y (..., out).
/// Implemented by the host's frozen base linear, by quantized linears (<see cref="Quantization.IQuantizer"/>),
/// and by adapter wrappers (LoRA, DoRA...), which keep the layer they wrap as <see cref="IAdapterLayer.BaseLayer"/>.
/// Every implementation is also a <c>Module&lt;Tensor, Tensor&gt;</c>, exposed as <see cref="Module"/>.
/// </summary>
public interface ILinearLayer
{
    long InFeatures { get; }
    long OutFeatures { get; }

    /// <summary>The layer as a TorchSharp module (normally <c>this</c>).</summary>
    nn.Module<Tensor, Tensor> Module { get; }

    /// <summary>The bias (out,), or null. Not owned by the caller.</summary>
    Tensor? Bias { get; }

    /// <summary>
    /// A NEW (out, in) tensor holding the effective dense weight in <paramref name="dtype"/>, detached from
    /// autograd; quantized layers dequantize. The caller disposes it.
    /// </summary>
    Tensor DenseWeight(ScalarType dtype = ScalarType.Float32);

    /// <summary>
    /// True when <see cref="SetDenseWeight"/> is supported (a plain layer, or a quantized layer that can
    /// re-quantize or fall back to dense storage).
    /// </summary>
    bool CanSetWeight { get; }

    /// <summary>Overwrite the weight with a dense (out, in) tensor (used by merge / unmerge). The value is copied.</summary>
    void SetDenseWeight(Tensor weight);
}

/// <summary>A linear layer that wraps another one (an adapter). Unwrapping restores <see cref="BaseLayer"/>.</summary>
public interface IAdapterLayer : ILinearLayer
{
    ILinearLayer BaseLayer { get; }
}
