using Peft.Host.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// The fused SwiGLU node and the two-tensor RoPE against the formulas composed from plain torch ops (what HF's
/// LlamaMLP and apply_rotary_pos_emb compute): same values and, through autograd, same gradients.
/// </summary>
public sealed class SwiGluAndRotaryTests
{
    [Fact]
    public void SwiGlu_matches_silu_times_up_in_value_and_both_gradients()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(3);
        var gate = (torch.randn([2, 5, 7], generator: g) * 3).requires_grad_();   // wide range: σ' matters
        var up = torch.randn([2, 5, 7], generator: g).requires_grad_();
        var upstream = torch.randn([2, 5, 7], generator: g);

        var fused = SwiGlu.Apply(gate, up);
        var (gradGate, gradUp) = Grads(fused, upstream, gate, up);
        var reference = nn.functional.silu(gate) * up;
        var (refGate, refUp) = Grads(reference, upstream, gate, up);

        Assert.True(fused.allclose(reference, rtol: 1e-6, atol: 1e-7));
        Assert.True(gradGate.allclose(refGate, rtol: 1e-5, atol: 1e-6), $"∂/∂gate differs by {(gradGate - refGate).abs().max().item<float>()}");
        Assert.True(gradUp.allclose(refUp, rtol: 1e-5, atol: 1e-6), $"∂/∂up differs by {(gradUp - refUp).abs().max().item<float>()}");
        // the hand formula at one point: g = 1, u = 2, ∂L/∂y = 1 → ∂/∂g = u σ(1)(1 + 1 − σ(1))
        double s = 1 / (1 + Math.Exp(-1));
        var one = torch.ones(1).requires_grad_();
        var two = torch.full(1, 2f).requires_grad_();
        var (d1, d2) = Grads(SwiGlu.Apply(one, two), torch.ones(1), one, two);
        Assert.Equal(2 * s * (2 - s), d1.item<float>(), 5);
        Assert.Equal(s, d2.item<float>(), 5);

        using var noGrad = torch.no_grad();
        Assert.True(SwiGlu.Apply(gate, up).allclose(reference.detach(), rtol: 1e-6, atol: 1e-7));
    }

    [Fact]
    public void Rope_matches_rotate_half_in_value_and_gradient()
    {
        using var scope = torch.NewDisposeScope();
        var rope = new RotaryEmbedding(8, 10000);
        var (cos, sin) = rope.Tables(3, 6, torch.CPU);                          // positions 3..8
        var x = torch.randn([2, 4, 6, 8], generator: new Generator(9)).requires_grad_();
        var upstream = torch.randn([2, 4, 6, 8], generator: new Generator(10));

        var ours = RotaryEmbedding.Apply(x, cos, sin);
        var (gradOurs, _) = Grads(ours, upstream, x, null);
        // HF: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(−x[d/2:], x[:d/2])
        var rotated = torch.cat([x.narrow(-1, 4, 4).neg(), x.narrow(-1, 0, 4)], -1);
        var reference = x * cos + rotated * sin;
        var (gradRef, _) = Grads(reference, upstream, x, null);

        Assert.True(ours.allclose(reference, rtol: 1e-6, atol: 1e-6), $"differs by {(ours - reference).abs().max().item<float>()}");
        Assert.True(gradOurs.allclose(gradRef, rtol: 1e-6, atol: 1e-6));
        // rotation keeps each pair's norm: |rope(x)| = |x| per (position, pair)
        Assert.True(ours.pow(2).sum(-1).allclose(x.pow(2).sum(-1), rtol: 1e-5, atol: 1e-5));
    }

    static (Tensor A, Tensor B) Grads(Tensor y, Tensor upstream, Tensor a, Tensor? b)
    {
        var inputs = b is null ? new[] { a } : new[] { a, b };
        var grads = torch.autograd.grad([y], inputs, [upstream]);
        return (grads[0], b is null ? grads[0] : grads[1]);
    }
}
