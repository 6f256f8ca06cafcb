using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// Implemented by a model that can keep its frozen base weights in a smaller storage dtype
/// (<c>training:base_dtype = "bfloat16"</c>). The layers keep computing in float32: a layer whose weight is
/// stored in bfloat16 upcasts it per call (<c>x · W.to(float32)ᵀ</c>), so activations and gradients of the
/// trainable parameters stay float32. Trainable parameters are never cast.
/// </summary>
public interface IBaseWeightsCaster
{
    /// <summary>
    /// Store every floating-point parameter for which <paramref name="isTrainable"/> is false in <paramref name="dtype"/>.
    /// Parameters named trainable keep their storage and identity (the optimizer holds them).
    /// </summary>
    void CastFrozenWeights(ScalarType dtype, Func<string, bool> isTrainable);
}

/// <summary>
/// Implemented by a model whose decoder layers can recompute their activations in the backward pass
/// (<c>training:activation_checkpointing</c>). When on, each layer runs through <see cref="ActivationCheckpoint.Run"/>.
/// </summary>
public interface IActivationCheckpointing
{
    bool ActivationCheckpointing { get; set; }
}
