using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Fakes;

/// <summary>
/// A plain dense linear layer y = x W^T + b for tests (the host's own base linear is not referenced here).
/// W (out, in) is a frozen Parameter named "weight".
/// </summary>
public sealed class TestLinear : nn.Module<Tensor, Tensor>, ILinearLayer
{
    Parameter weight;
    Parameter? bias;

    public TestLinear(Tensor weight, Tensor? bias = null) : base(nameof(TestLinear))
    {
        this.weight = new Parameter(weight.detach().clone(), requires_grad: false);
        this.bias = bias is null ? null : new Parameter(bias.detach().clone(), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>W ~ N(0, scale^2), shape (out, in); uses torch's global generator.</summary>
    public static TestLinear Random(long inFeatures, long outFeatures, double scale = 0.05, bool withBias = false)
    {
        using var w = torch.randn(outFeatures, inFeatures) * scale;
        using var b = withBias ? torch.randn(outFeatures) * scale : null;
        return new TestLinear(w, b);
    }

    public Parameter Weight => weight;
    public long InFeatures => weight.shape[1];
    public long OutFeatures => weight.shape[0];
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => bias;
    public bool CanSetWeight => true;

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = torch.no_grad();
        using var detached = weight.detach();
        return detached.to(dtype, copy: true);
    }

    public void SetDenseWeight(Tensor w)
    {
        using var _ = torch.no_grad();
        weight.copy_(w);
    }

    public override Tensor forward(Tensor x) => nn.functional.linear(x, weight, bias);
}
