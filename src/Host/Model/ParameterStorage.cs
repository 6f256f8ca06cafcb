using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A model layer that computes in its input's dtype (fp32) whatever dtype its parameters are stored in: it upcasts
/// a low-precision weight per call (<c>x · W.to(float32)ᵀ</c>), so its parameters may be re-stored in bf16/fp16.
/// Implemented by <see cref="BaseLinear"/>, <see cref="RmsNorm"/> and <see cref="TokenEmbedding"/>.
/// </summary>
internal interface IStorageDtypeLayer
{
    /// <summary>
    /// Store the direct parameter <paramref name="name"/> (<c>weight</c>, <c>bias</c>) in <paramref name="dtype"/>:
    /// a new Parameter with the same values (rounded) and requires_grad replaces it, the old one is freed.
    /// </summary>
    void StoreParameterAs(string name, ScalarType dtype);
}

internal static class ParameterStorage
{
    /// <summary>The storage dtypes a model parameter may have.</summary>
    public static bool IsSupported(ScalarType dtype) => dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16;

    /// <summary>
    /// A new leaf Parameter holding <paramref name="source"/>'s values in <paramref name="dtype"/>, outside any dispose
    /// scope. torch's <c>set_</c> refuses a dtype change and TorchSharp has no <c>p.data = ...</c>, so a re-stored
    /// parameter is a new object (as with TorchSharp's own <c>Module.to(dtype)</c>); callers free the old one.
    /// </summary>
    public static Parameter Recast(Parameter source, ScalarType dtype)
    {
        if (source.grad is not null)
            throw new InvalidOperationException("a parameter that holds a gradient cannot be re-stored in another dtype");
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();   // frees the detached view
        var p = new Parameter(source.detach().to(dtype), requires_grad: source.requires_grad);
        p.DetachFromDisposeScope();
        return p;
    }

    public static string UnknownParameter(string layer, string name) => $"{layer} has no parameter '{name}'";
}
