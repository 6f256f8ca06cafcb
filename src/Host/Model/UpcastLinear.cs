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
/// With autograd recording (training on a bf16 base) a plain <c>linear(x, W.to(fp32))</c> would keep the fp32 copy
/// of W for its backward until the step's backward reaches the layer: every frozen layer's copy alive at once, a
/// whole fp32 model. A frozen W (no gradient) goes through <see cref="FrozenUpcastFunction"/> instead, which keeps
/// only the stored (bf16) W and casts it again in backward:
/// <code>
///   forward   y  = x · W.to(fp32)ᵀ + b        the fp32 copy freed at once
///   backward  ∂x = ∂y · W.to(fp32)            the fp32 copy freed at once; ∂b = Σ ∂y when b trains
/// </code>
/// The same operations as with an fp32-stored W, so the same values; one layer's fp32 copy exists at a time.
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
        if (recording && !weight.requires_grad)
            return (b is null ? FrozenUpcastFunction.apply(x, weight) : FrozenUpcastFunction.apply(x, weight, b)).MoveToOuterDisposeScope();
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

    /// <summary>y = x · W.to(x.dtype)ᵀ + b for a frozen low-precision W, saving W as stored (see the class comment).</summary>
    sealed class FrozenUpcastFunction : autograd.SingleTensorFunction<FrozenUpcastFunction>
    {
        public override string Name => nameof(FrozenUpcastFunction);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var weight = (Tensor)vars[1];
            var bias = vars.Length > 2 ? (Tensor)vars[2] : null;
            using var scope = torch.NewDisposeScope();
            var y = nn.functional.linear(x, weight.to(x.dtype), bias);
            ctx.save_for_backward([weight]);
            ctx.save_data("bias", bias is null ? 0 : bias.requires_grad ? 2 : 1);
            ctx.save_data("input_dtype", x.dtype);
            return y.MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            using var scope = torch.NewDisposeScope();
            var weight = ctx.get_saved_variables()[0];
            var dtype = (ScalarType)ctx.get_data("input_dtype");
            var gradInput = gradOutput.matmul(weight.to(dtype)).MoveToOuterDisposeScope();      // (..., out) · (out, in)
            int bias = (int)ctx.get_data("bias");
            if (bias == 0) return [gradInput, null!];
            var gradBias = bias == 2 ? gradOutput.reshape(-1, gradOutput.shape[^1]).sum(0).MoveToOuterDisposeScope() : null;
            return [gradInput, null!, gradBias!];
        }
    }
}
