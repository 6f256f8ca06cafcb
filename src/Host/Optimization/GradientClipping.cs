using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Optimization;

/// <summary>
/// Global-norm gradient clipping as <c>torch.nn.utils.clip_grad_norm_</c>:
/// total = ‖(g_1, …, g_n)‖₂ over every gradient together; if <c>max_norm &gt; 0</c> every gradient is
/// multiplied by <c>min(1, max_norm / (total + 1e-6))</c>.
/// </summary>
public static class GradientClipping
{
    /// <summary>
    /// The global L2 norm of the gradients (parameters without one are skipped), computed as torch does (in the gradients' dtype).
    /// With <paramref name="maxNorm"/> &gt; 0 the gradients are scaled in place so the norm is at most max_norm.
    /// </summary>
    public static double ClipByGlobalNorm(IEnumerable<Parameter> parameters, double maxNorm)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var grads = new List<Tensor>();
        foreach (var p in parameters)
        {
            var g = p.grad;
            if (g is not null) grads.Add(g);
        }
        if (grads.Count == 0) return 0.0;
        // torch: total = ‖stack(‖g_i‖₂)‖₂ in the gradients' dtype; coef = clamp(max_norm / (total + 1e-6), max = 1)
        var norms = torch.stack(grads.Select(g => torch.linalg.vector_norm(g, 2)).ToArray());
        var totalNorm = torch.linalg.vector_norm(norms, 2);
        double total = totalNorm.to_type(ScalarType.Float64).item<double>();
        if (maxNorm > 0)
        {
            var coefficient = (maxNorm / (totalNorm + 1e-6)).clamp_max(1.0);
            foreach (var g in grads) g.mul_(coefficient.to(g.dtype));
        }
        return total;
    }
}
