using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The plain (frozen-base) linear layer of the model: <c>y = x W^T + b</c>, x (..., in) -> y (..., out).
/// <c>weight</c> (out, in) is stored in a storage dtype (fp32, bf16 or fp16); the product is computed in the
/// input's dtype by casting a temporary copy of the weight (no copy when the dtypes already agree).
/// </summary>
public sealed class BaseLinear : nn.Module<Tensor, Tensor>, ILinearLayer, IStorageDtypeLayer, IDenseLinear
{
    // Field names are the HF parameter names: "weight", "bias".
#pragma warning disable IDE1006
    Parameter weight;
    Parameter? bias;
#pragma warning restore IDE1006

    public BaseLinear(long inFeatures, long outFeatures, bool hasBias = false,
                      ScalarType storageDtype = ScalarType.Float32, Device? device = null)
        : base(nameof(BaseLinear))
    {
        if (inFeatures <= 0 || outFeatures <= 0)
            throw new ArgumentOutOfRangeException(nameof(inFeatures), $"BaseLinear needs positive sizes, got in={inFeatures}, out={outFeatures}");
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = new Parameter(torch.zeros(outFeatures, inFeatures, storageDtype, device));
        if (hasBias) bias = new Parameter(torch.zeros(outFeatures, storageDtype, device));
        RegisterComponents();
    }

    public long InFeatures { get; }
    public long OutFeatures { get; }

    /// <summary>The stored (out, in) weight parameter (not a copy).</summary>
    public Parameter Weight => weight;

    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => bias;

    /// <summary>x (..., in) -> x W^T + b (..., out), computed in x's dtype.</summary>
    public override Tensor forward(Tensor x)
    {
        return UpcastLinear.Forward(x, weight, bias);   // a low-precision weight is cast block by block when nothing records
    }

    /// <summary>Only when the layer has no bias (then y = x W^T exactly); the chunked loss asks it of the head.</summary>
    Tensor IDenseLinear.ComputeWeight(ScalarType dtype) =>
        bias is not null ? throw new InvalidOperationException("a layer with a bias is not a dense x W^T")
        : weight.dtype == dtype ? weight : weight.to(dtype);

    Tensor IDenseLinear.StoredWeight =>
        bias is not null ? throw new InvalidOperationException("a layer with a bias is not a dense x W^T") : weight;

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = torch.no_grad();
        // the intermediate stays in a scope, not only on the stack, so no GC can finalize it while clone reads it
        using var scope = torch.NewDisposeScope();
        return weight.detach().to(dtype).clone().MoveToOuterDisposeScope();
    }

    public bool CanSetWeight => true;

    public void SetDenseWeight(Tensor newWeight)
    {
        if (!newWeight.shape.SequenceEqual(new[] { OutFeatures, InFeatures }))
            throw new ArgumentException($"SetDenseWeight: expected shape [{OutFeatures}, {InFeatures}], got [{string.Join(", ", newWeight.shape)}]");
        using var _ = torch.no_grad();
        weight.copy_(newWeight);
    }

    void IStorageDtypeLayer.StoreParameterAs(string name, ScalarType dtype)
    {
        var old = name switch
        {
            "weight" => weight,
            "bias" when bias is not null => bias,
            _ => throw new ArgumentException(ParameterStorage.UnknownParameter(nameof(BaseLinear), name), nameof(name)),
        };
        var stored = ParameterStorage.Recast(old, dtype);
        if (name == "weight") weight = stored; else bias = stored;
        ConditionallyRegisterParameter(name, stored);
        old.Dispose();
    }

    /// <summary>Copy a bias (out,) in; the layer must have been built with a bias.</summary>
    internal void SetBias(Tensor newBias)
    {
        if (bias is null) throw new InvalidOperationException("this layer has no bias");
        using var _ = torch.no_grad();
        bias.copy_(newBias);
    }
}
