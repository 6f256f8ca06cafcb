using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// <c>y = x · Wᵀ + b</c> in x's dtype for a weight stored in another dtype (a bf16 base computed in fp32). Casting
/// the whole weight per call costs a full fp32 copy of it: for a 128,256-row embedding used as the head that is
/// vocab × hidden × 4 bytes (131 MiB at hidden 256, 2 GiB at 4096) on every forward. When no gradient is needed
/// (eval, generate) the weight is cast in blocks of rows, each block's product written into its columns of y:
/// <code>
///   y[..., r0:r1] = x · W[r0:r1].to(x.dtype)ᵀ (+ b[r0:r1])        W (out, in), block ≤ 4M weights (16 MiB of fp32)
/// </code>
/// With autograd recording (training on a bf16 base), the cast copy is what linear saves for its backward, so the
/// plain cast is kept there.
/// </summary>
internal static class UpcastLinear
{
    const long BlockWeights = 4L << 20;

    public static Tensor Forward(Tensor x, Tensor weight, Tensor? bias, long blockWeights = BlockWeights)
    {
        using var scope = torch.NewDisposeScope();
        var b = bias is null ? null : bias.dtype == x.dtype ? bias : bias.to(x.dtype);
        if (weight.dtype == x.dtype) return nn.functional.linear(x, weight, b).MoveToOuterDisposeScope();
        long outF = weight.shape[0], inF = weight.shape[1];
        long rows = Math.Max(1, blockWeights / inF);
        bool recording = torch.is_grad_enabled() && (x.requires_grad || weight.requires_grad);
        if (recording || rows >= outF) return nn.functional.linear(x, weight.to(x.dtype), b).MoveToOuterDisposeScope();

        var shape = x.shape.ToArray();
        shape[^1] = outF;
        var y = torch.empty(shape, x.dtype, x.device);
        for (long r0 = 0; r0 < outF; r0 += rows)
        {
            long n = Math.Min(rows, outF - r0);
            using var block = weight.narrow(0, r0, n).to(x.dtype);
            using var part = nn.functional.linear(x, block, b?.narrow(0, r0, n));
            y.narrow(-1, r0, n).copy_(part);
        }
        return y.MoveToOuterDisposeScope();
    }
}
