using Peft.Host.Model;
using Peft.Host.Training;
using Peft.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// <see cref="SwiGlu"/>: the same values and gradients as autograd's silu(a) * b, for every combination of inputs
/// that need a gradient, and the same training losses; no tensor left alive by a forward and backward.
/// </summary>
public sealed class SwiGluTests
{
    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Values_and_gradients_equal_autograds_silu_times_up(bool gateTrains, bool upTrains)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var a0 = torch.randn(3, 7, 40, dtype: ScalarType.Float64) * 3;   // silu's bend and both tails
        var b0 = torch.randn(3, 7, 40, dtype: ScalarType.Float64);
        var g = torch.randn(3, 7, 40, dtype: ScalarType.Float64);

        (Tensor H, Tensor? Da, Tensor? Db) Run(Func<Tensor, Tensor, Tensor> f)
        {
            var a = a0.clone().requires_grad_(gateTrains);
            var b = b0.clone().requires_grad_(upTrains);
            // through one more op each, as gate_proj/up_proj outputs are non-leaf tensors
            var h = f(a * 1.0, b * 1.0);
            h.backward([g]);
            return (h.detach(), a.grad, b.grad);
        }

        var expected = Run((a, b) => nn.functional.silu(a) * b);
        var fused = Run(SwiGlu.Apply);
        (fused.H - expected.H).abs().max().item<double>().Should().BeLessThan(1e-12);
        if (gateTrains) (fused.Da! - expected.Da!).abs().max().item<double>().Should().BeLessThan(1e-12);
        else fused.Da.Should().BeNull();
        if (upTrains) (fused.Db! - expected.Db!).abs().max().item<double>().Should().BeLessThan(1e-12);
        else fused.Db.Should().BeNull();
    }

    [Fact]
    public void Without_gradients_it_is_the_plain_product_and_records_nothing()
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.randn(4, 8).requires_grad_(true);
        var b = torch.randn(4, 8);
        using (torch.no_grad())
        {
            var h = SwiGlu.Apply(a, b);
            h.requires_grad.Should().BeFalse();
            (h - nn.functional.silu(a) * b).abs().max().item<float>().Should().Be(0f);
        }
        var act = () => SwiGlu.Apply(a, torch.randn(4, 9));
        act.Should().Throw<ArgumentException>().WithMessage("*[4, 8]*[4, 9]*same shape*");
    }

    [Fact]
    public void A_forward_and_backward_leave_no_tensor_alive()
    {
        var a = torch.randn(16, 32).requires_grad_(true);
        var b = torch.randn(16, 32).requires_grad_(true);
        DisposeScopeManager.Statistics.Reset();
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        using (var scope = torch.NewDisposeScope())
        {
            var h = SwiGlu.Apply(a * 1f, b * 1f);
            h.sum().backward();
        }
        (DisposeScopeManager.Statistics.ThreadTotalLiveCount - before).Should().Be(0);
        a.grad.Should().NotBeNull();
        b.grad.Should().NotBeNull();
        a.grad!.Dispose(); b.grad!.Dispose(); a.Dispose(); b.Dispose();
    }
}

/// <summary>
/// What a training forward of the SwiGLU product leaves alive for backward, read from the C heap (glibc mallinfo2):
/// the output h, gate and up, not silu(gate) too. Runs alone, so no other test's allocations move the figure.
/// </summary>
[Collection(HeapPeakSamplerCollection.Name)]
public sealed class SwiGluMemoryTests
{
    [Fact]
    public void A_training_forward_keeps_gate_and_up_but_not_silu_of_gate()
    {
        long unit = 2048L * 2048 * 4;   // one (2048, 2048) fp32 tensor: 16 MiB
        long Kept(Func<Tensor, Tensor, Tensor> product)
        {
            using var x = torch.randn(2048, 2048).requires_grad_(true);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            long before = ProcessMemory.HeapInUse() ?? throw new InvalidOperationException("the tests run on Linux with glibc ≥ 2.33");
            long kept;
            using (var scope = torch.NewDisposeScope())
            {
                Tensor h;
                using (var inner = torch.NewDisposeScope())
                {
                    var gate = x * 2f;   // non-leaf, like gate_proj's output; alive after this scope only if saved
                    var up = x * 3f;
                    h = product(gate, up).MoveToOuterDisposeScope();
                }
                kept = ProcessMemory.HeapInUse()!.Value - before;
                h.sum().backward();
            }
            x.grad!.Dispose();
            return kept;
        }

        long plain = Kept((a, b) => nn.functional.silu(a) * b);
        long fused = Kept(SwiGlu.Apply);
        // plain: h, gate, silu(gate), up = 4 units; fused: h, gate, up = 3 units
        plain.Should().BeGreaterThan(unit * 7 / 2, "autograd's ops keep gate, silu(gate) and up besides h");
        fused.Should().BeGreaterThan(unit * 5 / 2).And.BeLessThan(unit * 7 / 2, "SwiGlu keeps h, gate and up only");
    }
}
