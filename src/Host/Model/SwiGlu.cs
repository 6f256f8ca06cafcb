using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The SwiGLU gate of Llama's MLP (Shazeer 2020) as one autograd node that keeps only its two inputs:
/// <code>
///   y = silu(g) ⊙ u                    g = gate_proj(x), u = up_proj(x), both (B, T, inner)
///   ∂L/∂u = ∂L/∂y ⊙ silu(g)            silu(g) = g σ(g)
///   ∂L/∂g = ∂L/∂y ⊙ u ⊙ σ(g) (1 + g (1 − σ(g)))
/// </code>
/// Composed from silu and mul, autograd would keep g, silu(g) and u (three (B, T, inner) tensors per layer) and
/// make three more in backward; this keeps g and u, recomputes σ(g) in backward, and makes one tensor each way.
/// </summary>
public static class SwiGlu
{
    public static Tensor Apply(Tensor gate, Tensor up)
    {
        if (!torch.is_grad_enabled() || (!gate.requires_grad && !up.requires_grad))
        {
            using var scope = torch.NewDisposeScope();
            return nn.functional.silu(gate).mul_(up).MoveToOuterDisposeScope();
        }
        return GateFunction.apply(gate, up);
    }

    sealed class GateFunction : autograd.SingleTensorFunction<GateFunction>
    {
        public override string Name => nameof(SwiGlu);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var gate = (Tensor)vars[0];
            var up = (Tensor)vars[1];
            ctx.save_for_backward([gate, up]);
            using var scope = torch.NewDisposeScope();
            return nn.functional.silu(gate).mul_(up).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = ctx.get_saved_variables();
            var (gate, up) = (saved[0], saved[1]);
            using var scope = torch.NewDisposeScope();
            var sigma = gate.sigmoid();                                                      // σ(g)
            // σ(g)(1 + g(1 − σ(g))) ⊙ u ⊙ ∂L/∂y, in one new tensor
            var gradGate = sigma.neg().add_(1).mul_(gate).add_(1).mul_(sigma).mul_(up).mul_(gradOutput);
            var gradUp = sigma.mul_(gate).mul_(gradOutput);                                  // silu(g) ⊙ ∂L/∂y, over σ(g)
            return [gradGate.MoveToOuterDisposeScope(), gradUp.MoveToOuterDisposeScope()];
        }
    }
}
