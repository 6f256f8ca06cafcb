using Peft.Host.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// The two-tensor RoPE against HF's apply_rotary_pos_emb composed from plain torch ops (x·cos + rotate_half(x)·sin):
/// same values and, through autograd, same gradients.
/// </summary>
public sealed class RotaryEmbeddingTests
{
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
