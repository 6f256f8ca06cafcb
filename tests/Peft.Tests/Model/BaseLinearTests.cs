using Peft.Host.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

public sealed class BaseLinearTests
{
    [Fact]
    public void Forward_is_x_W_transpose_plus_b_in_the_inputs_dtype()
    {
        using var layer = new BaseLinear(3, 2, hasBias: true, ScalarType.BFloat16);
        using (torch.no_grad())
        {
            layer.SetDenseWeight(torch.tensor(new float[] { 1, 2, 3, -1, 0.5f, 0.25f }).view(2, 3));
            layer.SetBias(torch.tensor(new float[] { 10, 20 }));
        }
        layer.Weight.dtype.Should().Be(ScalarType.BFloat16);
        using var x = torch.tensor(new float[] { 1, 1, 1, 2, 0, -4 }).view(2, 3);
        using var y = layer.call(x);
        y.dtype.Should().Be(ScalarType.Float32);
        // Row 1: [1+2+3+10, -1+0.5+0.25+20]; row 2: [2-12+10, -2-1+20]
        y.data<float>().ToArray().Should().Equal(16f, 19.75f, 0f, 17f);
    }

    [Fact]
    public void DenseWeight_is_a_detached_copy_and_SetDenseWeight_copies_in()
    {
        using var layer = new BaseLinear(4, 3);
        using var source = torch.randn(3, 4);
        layer.SetDenseWeight(source);
        using (torch.no_grad()) source.add_(1.0);
        using var dense = layer.DenseWeight();
        dense.requires_grad.Should().BeFalse();
        (dense - (source - 1.0)).abs().max().item<float>().Should().BeLessThan(1e-6f, "the layer kept the value, not the tensor");
        using (torch.no_grad()) dense.zero_();
        layer.Weight.abs().sum().item<float>().Should().BeGreaterThan(0f, "DenseWeight returned a copy");

        using var half = layer.DenseWeight(ScalarType.Float16);
        half.dtype.Should().Be(ScalarType.Float16);
        var act = () => layer.SetDenseWeight(torch.zeros(4, 3));
        act.Should().Throw<ArgumentException>().WithMessage("*[3, 4]*[4, 3]*");
    }

    [Fact]
    public void Gradient_reaches_the_stored_weight()
    {
        using var layer = new BaseLinear(5, 2);
        using var x = torch.randn(3, 5);
        layer.call(x).sum().backward();
        layer.Weight.grad.Should().NotBeNull();
        // d(sum(x W^T))/dW[o, i] = sum over rows of x[:, i]
        using var expected = x.sum(new long[] { 0 }).expand(2, 5);
        layer.Weight.grad!.allclose(expected, rtol: 1e-5, atol: 1e-6).Should().BeTrue();
    }
}
