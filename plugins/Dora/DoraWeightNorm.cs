using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Dora;

/// <summary>
/// The device seam of the DoRA plugin: the row norm of the adapted weight, <c>‖W + s·B@A‖</c> over the input
/// dimension, the one computation DoRA adds to LoRA's on every forward. <see cref="CpuDoraWeightNorm"/> is the
/// implementation here; a CUDA kernel (one fused pass over the terms below) is a drop-in class beside it, chosen in
/// <see cref="DoraVariantFactory.For"/> from <c>IPeftModel.Device</c>.
/// </summary>
public interface IDoraWeightNorm
{
    /// <summary>
    /// Expanded form, never materialising the (out, in) matrix W + s·BA:
    /// <code>
    ///   ‖W_i + s(BA)_i‖² = ‖W_i‖² + 2s·(W Aᵀ)_i·B_i + s²·B_i (A Aᵀ) B_iᵀ
    ///   baseRowNormSq ‖W_i‖²: (out,)   weightTimesAT W Aᵀ: (out, r)   A: (r, in)   B: (out, r)   result: (out,)
    /// </code>
    /// Costs O(out·r² + r²·in) given W Aᵀ, instead of O(out·in·r) plus two (out, in) temporaries.
    /// </summary>
    Tensor ExpandedRowNorm(Tensor baseRowNormSq, Tensor weightTimesAT, Tensor a, Tensor b, double scaling);

    /// <summary>Direct form: <c>‖W + s·B@A‖</c> row-wise, materialising the (out, in) sum. W (out, in) → (out,).</summary>
    Tensor DirectRowNorm(Tensor weight, Tensor a, Tensor b, double scaling);
}

/// <summary>The CPU implementation of <see cref="IDoraWeightNorm"/> (plain LibTorch ops, float32).</summary>
public sealed class CpuDoraWeightNorm : IDoraWeightNorm
{
    public static readonly CpuDoraWeightNorm Instance = new();

    public Tensor ExpandedRowNorm(Tensor baseRowNormSq, Tensor weightTimesAT, Tensor a, Tensor b, double scaling)
    {
        using var scope = torch.NewDisposeScope();
        var cross = (weightTimesAT * b).sum(1);                     // (W Aᵀ)_i · B_i            (out,)
        var aat = a.matmul(a.t());                                  // A Aᵀ                      (r, r)
        var quad = (b.matmul(aat) * b).sum(1);                      // B_i (A Aᵀ) B_iᵀ           (out,)
        var sq = baseRowNormSq.add(cross, alpha: 2 * scaling).add_(quad, alpha: scaling * scaling);
        return sq.clamp_min_(0).sqrt_().MoveToOuterDisposeScope();  // rounding can push a ~0 row below 0
    }

    public Tensor DirectRowNorm(Tensor weight, Tensor a, Tensor b, double scaling)
    {
        using var scope = torch.NewDisposeScope();
        var combined = weight.add(b.matmul(a), alpha: scaling);     // W + s·BA                  (out, in)
        return torch.linalg.vector_norm(combined, ord: 2, dims: [1]).MoveToOuterDisposeScope();
    }
}
