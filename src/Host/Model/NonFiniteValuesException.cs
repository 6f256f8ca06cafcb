using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A tensor or a model output holds NaN or infinity (a broken adapter, an absurd lora_alpha, a damaged weights
/// file). The CLI reports it in one line with exit code 2, naming the tensor where it can.
/// </summary>
public sealed class NonFiniteValuesException(string message) : Exception(message)
{
    /// <summary>Values checked at a time (16 MiB of fp32), so a check never makes masks the size of a whole tensor.</summary>
    const long CheckChunk = 4L << 20;

    /// <summary>The first parameter of <paramref name="parameters"/> holding NaN or infinity, or null.</summary>
    public static string? FirstNonFinite(IEnumerable<(string Name, Tensor Tensor)> parameters)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, t) in parameters)
        {
            if (!t.is_floating_point()) continue;
            // In chunks of 4M values: isfinite of a whole 128,256 × d bf16 embedding makes an |t| copy and two
            // masks of its size (about 2 × the tensor), a chunk makes 16 MiB at most.
            using var scope = torch.NewDisposeScope();
            var flat = t.detach().reshape(-1);
            long n = flat.shape[0];
            for (long start = 0; start < n; start += CheckChunk)
            {
                using var part = flat.narrow(0, start, Math.Min(CheckChunk, n - start));
                using var finite = torch.isfinite(part);
                if (!finite.all().item<bool>()) return name;
            }
        }
        return null;
    }
}
