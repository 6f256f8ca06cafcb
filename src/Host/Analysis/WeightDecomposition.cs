using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Analysis;

/// <summary>
/// DoRA's weight decomposition analysis (Liu et al. 2024, arXiv 2402.09353, §2.2, eq. 2–4). A weight
/// W ∈ R^{d×k} is split into magnitude and direction, W = m · V/‖V‖_c, with ‖·‖_c the norm of each column.
/// In the paper's convention (h = x W, k = output features) a column is one output feature's weights, which in
/// torch's nn.Linear layout W_torch [out, in] is one ROW (PEFT's DoRA magnitude likewise has shape [out]). For the
/// fine-tuned W^t against the pre-trained W_0:
/// <code>
///   ΔM^t = (1/k) Σ_n | ‖W^t_n‖ − ‖W_0,n‖ |              mean magnitude change over the k columns
///   ΔD^t = (1/k) Σ_n ( 1 − cos(W^t_n, W_0,n) )           mean direction change over the k columns
/// </code>
/// computed in float64. The paper plots (ΔD, ΔM) over layers and checkpoints: full fine-tuning and DoRA show a
/// negative slope, LoRA a positive one; <see cref="Pearson"/> gives that correlation.
/// </summary>
public static class WeightDecomposition
{
    /// <summary>ΔM and ΔD of <paramref name="tuned"/> against <paramref name="pretrained"/>, both [out, in].</summary>
    public static (double DeltaM, double DeltaD) Compare(Tensor pretrained, Tensor tuned)
    {
        if (pretrained.ndim != 2 || !pretrained.shape.SequenceEqual(tuned.shape))
            throw new ArgumentException($"weights must be 2-D and of one shape, got [{string.Join(", ", pretrained.shape)}] and [{string.Join(", ", tuned.shape)}]");
        using var scope = torch.NewDisposeScope();
        var w0 = pretrained.detach().to(ScalarType.Float64);
        var w1 = tuned.detach().to(ScalarType.Float64);
        var m0 = w0.norm(1);                  // [out]: ‖W_0,n‖ per paper column (torch row)
        var m1 = w1.norm(1);
        double deltaM = (m1 - m0).abs().mean().item<double>();
        var cos = (w0 * w1).sum(1) / (m0 * m1).clamp_min(1e-300);
        double deltaD = (1 - cos).mean().item<double>();
        return (deltaM, deltaD);
    }

    /// <summary>Pearson's correlation coefficient; NaN with fewer than two points or no variance.</summary>
    public static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("x and y differ in length");
        int n = x.Count;
        if (n < 2) return double.NaN;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++)
        {
            double dx = x[i] - mx, dy = y[i] - my;
            sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
        }
        return sxx == 0 || syy == 0 ? double.NaN : sxy / Math.Sqrt(sxx * syy);
    }
}
