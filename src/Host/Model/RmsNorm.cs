using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// RMSNorm (Zhang &amp; Sennrich 2019), as HF's LlamaRMSNorm: y = w * x / sqrt(mean(x^2 over the last dim) + eps),
/// the statistics in fp32, x (..., hidden) -> y (..., hidden) in x's dtype.
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>, IStorageDtypeLayer
{
#pragma warning disable IDE1006
    Parameter weight;
#pragma warning restore IDE1006
    readonly double _eps;

    public RmsNorm(long hiddenSize, double eps, ScalarType storageDtype = ScalarType.Float32, Device? device = null)
        : base(nameof(RmsNorm))
    {
        _eps = eps;
        weight = new Parameter(torch.ones(hiddenSize, storageDtype, device));
        RegisterComponents();
    }

    public Parameter Weight => weight;

    void IStorageDtypeLayer.StoreParameterAs(string name, ScalarType dtype)
    {
        if (name != "weight") throw new ArgumentException(ParameterStorage.UnknownParameter(nameof(RmsNorm), name), nameof(name));
        var old = weight;
        weight = ParameterStorage.Recast(old, dtype);
        ConditionallyRegisterParameter(name, weight);
        old.Dispose();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var x32 = x.to(ScalarType.Float32);
        var inverseRms = x32.pow(2).mean(new long[] { -1 }, keepdim: true).add_(_eps).rsqrt_(); // (..., 1)
        var normed = (x32 * inverseRms).to(x.dtype);                  // a new tensor; no backward formula reads it
        var w = weight.dtype == x.dtype ? (Tensor)weight : weight.to(x.dtype);
        // A frozen weight (LoRA, QLoRA...): scale in place, one (..., hidden) tensor fewer. A trainable one needs
        // normed kept for ∂L/∂w, so it gets a product of its own.
        return (w.requires_grad ? w * normed : normed.mul_(w)).MoveToOuterDisposeScope();
    }
}
