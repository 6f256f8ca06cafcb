using TorchSharp.Modules;
using static TorchSharp.torch;
using Peft.Abstractions.Model;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// A quantized linear layer whose weight W (out, in) TRAINS while it stays quantized (Q-GaLore, arXiv 2407.08296:
/// <c>quantization: int8</c> + <c>optimizer: galore</c>, no method). The layer keeps only its codes and scales between
/// steps; training goes through two seams:
/// <code>
///   forward/backward  y = x·deq(W)ᵀ + b with <see cref="GradientProxy"/> as an autograd input, so backward leaves
///                     ∂L/∂W (out, in) in GradientProxy.grad (the proxy itself holds no weight: zero strides)
///   update            an optimizer computes W' = deq(W) − Δ in float32 and calls <see cref="ApplyUpdate"/>, which
///                     re-quantizes W' with stochastic rounding (unbiased: E[deq(Q(W'))] = W'), so updates smaller
///                     than a quantization step are not lost on average
/// </code>
/// Implemented by quantizers' layers (the QLoRA plugin's <c>int8</c>); used by optimizer strategies that declare
/// <see cref="Optimization.IOptimizerStrategy.TrainsQuantizedWeights"/> (GaLore). A strategy finds these layers
/// through <see cref="IPeftModel.LinearSlots"/> and <see cref="IPeftModel.GetLinear"/>; the proxies are not model
/// parameters, so full fine-tuning's trainable list never holds them. The dense weight for an HF model folder comes
/// from <see cref="ILinearLayer.DenseWeight"/> (dequantized).
/// </summary>
public interface ITrainableQuantizedWeight : ILinearLayer, IQuantizedWeightBytes
{
    /// <summary>(out, in) float32 parameter that receives ∂L/∂W in <c>.grad</c>; never written in place. Owned by the layer.</summary>
    Parameter GradientProxy { get; }

    /// <summary>Re-quantize the updated float (out, in) weight with stochastic rounding (torch's default generator).</summary>
    void ApplyUpdate(Tensor updatedWeight);

    /// <summary>The tensors that hold the quantized weight (codes, scales) by name, for checkpoints: aliases, do not dispose.</summary>
    IReadOnlyDictionary<string, Tensor> QuantizedState { get; }

    /// <summary>Replace the quantized weight with stored tensors (copied); a missing key, wrong shape or dtype throws naming it.</summary>
    void LoadQuantizedState(IReadOnlyDictionary<string, Tensor> state);

    /// <summary>Bytes the quantized weight occupies (codes + scales); the same figure as <see cref="IQuantizedWeightBytes.QuantizedBytes"/>.</summary>
    new long QuantizedBytes { get; }
}
