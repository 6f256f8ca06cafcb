using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The gated product of Llama's SwiGLU MLP (Shazeer 2020), h = silu(a) ⊙ b with a = gate_proj(x) and
/// b = up_proj(x), all (…, I), as one autograd node that keeps only what backward cannot recompute cheaply:
/// <code>
///   forward :  h = silu(a) ⊙ b                                   keeps a, and b when a needs a gradient
///   backward:  s = silu(a) (recomputed);   ∂L/∂b = ∂L/∂h ⊙ s;   ∂L/∂a = silu′(a) ⊙ (∂L/∂h ⊙ b)
/// </code>
/// Autograd's own ops (silu, then mul) keep a, silu(a) and b: one (…, I) tensor more per layer at the peak of a
/// training step, where every layer's activations are alive at once (6 MiB per layer on the stories15M shape with
/// 1024 tokens). The price is one silu pass per layer in backward; ∂L/∂a still comes from LibTorch's fused
/// <c>silu_backward</c> (through <c>autograd.grad</c> of the recomputed silu).
/// <para>
/// The saved tensors are this node's own handles, released as soon as its backward has run, not at the end of the
/// step (TorchSharp's <c>save_for_backward</c> holds them until the graph is freed: measured, two 16 MiB inputs still
/// alive after backward). A graph dropped without backward leaves them to their finalizers. So the node supports one
/// backward per forward, which is what the trainer runs; a second backward through the same graph
/// (<c>retain_graph</c>) is refused with a message that says so.
/// </para>
/// </summary>
public static class SwiGlu
{
    /// <summary>silu(<paramref name="a"/>) ⊙ <paramref name="b"/> (same shapes); differentiable in both.</summary>
    public static Tensor Apply(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape))
            throw new ArgumentException($"gate [{string.Join(", ", a.shape)}] and up [{string.Join(", ", b.shape)}] must have the same shape");
        bool needA = a.requires_grad, needB = b.requires_grad;
        if (!torch.is_grad_enabled() || (!needA && !needB))
            return nn.functional.silu(a).mul_(b);
        return SwiGluFunction.apply(new Flags(needA, needB), a, b);
    }

    sealed record Flags(bool NeedA, bool NeedB);

    /// <summary>The forward's tensors for backward: own handles (outside every dispose scope), disposed after use.</summary>
    sealed class Saved(Flags flags, Tensor a, Tensor? b) : IDisposable
    {
        public Flags Flags { get; } = flags;
        public Tensor A { get; } = a;
        public Tensor? B { get; } = b;
        public bool Released { get; private set; }

        public void Dispose()
        {
            Released = true;
            A.Dispose();
            B?.Dispose();
        }
    }

    sealed class SwiGluFunction : autograd.SingleTensorFunction<SwiGluFunction>
    {
        public override string Name => nameof(SwiGlu);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var flags = (Flags)vars[0];
            var a = (Tensor)vars[1];
            var b = (Tensor)vars[2];
            // apply() runs forward with grad mode off: nothing is recorded here.
            var h = nn.functional.silu(a).mul_(b);
            // b is needed only for ∂L/∂a; a always (∂L/∂b needs silu(a)).
            var keptA = a.detach().DetachFromDisposeScope();
            var keptB = flags.NeedA ? b.detach().DetachFromDisposeScope() : null;
            ctx.save_data("saved", new Saved(flags, keptA, keptB));
            return h;
        }

        /// <summary>The gradients this thread's previous backward call returned (see <see cref="backward"/>).</summary>
        [ThreadStatic] static List<Tensor>? t_returned;

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var saved = (Saved)ctx.get_data("saved");
            if (saved.Released)
                throw new InvalidOperationException("SwiGlu (the MLP's silu(gate) * up) frees what it saved after its first backward: " +
                                                    "a second backward through the same graph (retain_graph) is not supported; run the forward again");
            // TorchSharp keeps the handles of the gradient it passes in and of the tensors returned; the engine holds
            // its own references, so release ours once used (as FourBitLinear's function does): gradOutput below,
            // the previous call's results now (the engine copied them out when that call returned).
            if (t_returned is not null) foreach (var t in t_returned) t.Dispose();
            Tensor? gradA = null, gradB = null;
            using (var scope = torch.NewDisposeScope())
            {
                if (saved.Flags.NeedA)
                {
                    using var enable = torch.enable_grad();
                    var a = saved.A.detach().requires_grad_(true);
                    var s = nn.functional.silu(a);
                    gradA = torch.autograd.grad([s], [a], [gradOutput * saved.B!])[0].MoveToOuterDisposeScope();  // silu_backward
                    if (saved.Flags.NeedB) gradB = s.detach().mul_(gradOutput).MoveToOuterDisposeScope();          // after grad(): s is no longer in a graph
                }
                else
                {
                    gradB = nn.functional.silu(saved.A).mul_(gradOutput).MoveToOuterDisposeScope();
                }
            }
            saved.Dispose();
            gradOutput.Dispose();
            var returned = new List<Tensor> { null!, gradA!, gradB! };
            t_returned = returned.Where(t => t is not null).ToList();   // also in the caller's scope, which frees the last ones
            return returned;
        }
    }
}
