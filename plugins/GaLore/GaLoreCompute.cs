using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.GaLore;

/// <summary>
/// GaLore's device-specific compute: the truncated SVD that gives the projector. The CPU implementation is
/// <see cref="CpuGaLoreCompute"/>; a CUDA one (e.g. a randomized SVD) is a drop-in class beside it, chosen in
/// <see cref="For"/> from the model's device.
/// </summary>
public interface IGaLoreCompute
{
    /// <summary>
    /// For G (m, n): NEW tensors U_r (m, r) and Vh_r (r, n), the first r = min(rank, m, n) left and right singular
    /// vectors of G (float32), as <c>torch.linalg.svd(G, full_matrices=False)</c> orders them.
    /// </summary>
    (Tensor U, Tensor Vh) TopSingularVectors(Tensor gradient, int rank);

    public static IGaLoreCompute For(Device device) => new CpuGaLoreCompute();
}

/// <summary>LibTorch's LAPACK SVD on the CPU (the official code's <c>torch.linalg.svd</c> in float32).</summary>
public sealed class CpuGaLoreCompute : IGaLoreCompute
{
    public (Tensor U, Tensor Vh) TopSingularVectors(Tensor gradient, int rank)
    {
        using var scope = torch.NewDisposeScope();
        var g = gradient.dtype == ScalarType.Float32 ? gradient : gradient.to_type(ScalarType.Float32);
        var (u, _, vh) = torch.linalg.svd(g, fullMatrices: false);   // U (m, k), S (k), Vh (k, n), k = min(m, n)
        long r = Math.Min(rank, Math.Min(g.shape[0], g.shape[1]));
        var ur = u.narrow(1, 0, r).contiguous();
        var vhr = vh.narrow(0, 0, r).contiguous();
        return (ur.MoveToOuterDisposeScope(), vhr.MoveToOuterDisposeScope());
    }
}
