using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using Peft.Plugins.GaLore;
using Peft.Plugins.QLora;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.GaLore;

[Collection(Peft.Plugins.Tests.QLora.QLoraSerialCollection.Name)]   // draws from torch's global generator
public class Int8TrainableWeightTests
{
    /// <summary>
    /// Stochastic rounding of v = w/s draws q = ⌊v⌋ + Bernoulli(f), f = v − ⌊v⌋: E[s·q] = w, Var[s·q] = s²·f(1 − f) ≤ s²/4.
    /// The mean of N independent roundings then has standard deviation ≤ s/(2√N); we require every element within
    /// 5 of those (N = 20000, s = 0.01: 1.8e-4), while round-to-nearest is off by s·min(f, 1 − f) (up to 5e-3 here).
    /// </summary>
    [Fact]
    public void Stochastic_rounding_is_unbiased_within_five_standard_deviations_of_the_mean()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(1234);
        const int n = 20000;
        const double s = 0.01;
        var row = torch.tensor(new float[] { 1.27f, -0.0230f, 0.4450f, 0.0010f, -0.7770f, 0.0199f, 0.3333f, -1.0005f });   // absmax 1.27 → s = 0.01
        var w = row.unsqueeze(0).expand(n, 8).contiguous();
        var (codes, scale) = Int8Quantizer.QuantizeStochastic(w);
        codes.dtype.Should().Be(ScalarType.Int8);
        scale[0].item<float>().Should().BeApproximately((float)s, 1e-7f);
        var mean = Int8Quantizer.Dequantize(codes, scale).to_type(ScalarType.Float64).mean([0]);
        double bound = 5 * s / (2 * Math.Sqrt(n));
        var error = (mean - row.to_type(ScalarType.Float64)).abs();
        error.max().item<double>().Should().BeLessThan(bound);

        var (nearest, nearestScale) = Int8Quantizer.QuantizeNearest(row.unsqueeze(0));
        var nearestError = (Int8Quantizer.Dequantize(nearest, nearestScale)[0] - row).abs().max().item<float>();
        nearestError.Should().BeGreaterThan((float)(10 * bound), "round-to-nearest is biased by up to s/2; the bound above would catch it");
    }

    [Fact]
    public void Int8Linear_computes_with_the_dequantized_weight_and_leaves_the_weight_gradient_in_its_proxy()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var dense = torch.randn(6, 4);
        using var source = new TestDense(dense);
        var layer = (Int8Linear)new Int8Quantizer().Quantize("l", source, new Microsoft.Extensions.Configuration.ConfigurationBuilder().Build());
        layer.Codes.dtype.Should().Be(ScalarType.Int8);
        var deq = layer.DenseWeight();
        (deq - dense).abs().max().item<float>().Should().BeLessThanOrEqualTo(dense.abs().max().item<float>() / 127 / 2 + 1e-6f, "within half a step of the row's scale");

        layer.GradientProxy.requires_grad_(true);
        var x = torch.randn(2, 3, 4).requires_grad_(true);
        var y = layer.call(x);
        (y - x.matmul(deq.t())).abs().max().item<float>().Should().BeLessThan(1e-5f);
        var dy = torch.randn(2, 3, 6);
        y.backward([dy]);
        var expectedGradW = dy.reshape(-1, 6).t().matmul(x.detach().reshape(-1, 4));
        (layer.GradientProxy.grad! - expectedGradW).abs().max().item<float>().Should().BeLessThan(1e-5f);
        (x.grad! - dy.matmul(deq)).abs().max().item<float>().Should().BeLessThan(1e-5f);
        layer.GradientProxy.grad!.is_contiguous().Should().BeTrue();
    }

    [Fact]
    public void GaLore_updates_an_int8_weight_by_requantizing_the_float_update_and_checkpoints_its_codes()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(9);
        using var source = new TestDense(torch.randn(8, 5));
        var layer = (Int8Linear)new Int8Quantizer().Quantize("l", source, new Microsoft.Extensions.Configuration.ConfigurationBuilder().Build());
        var quantized = new Dictionary<string, ITrainableQuantizedWeight> { ["l.weight"] = layer };
        layer.GradientProxy.requires_grad_(true);
        var opts = new GaLoreOptions { Rank = 2, UpdateProjGap = 10 };
        using var optimizer = new GaLoreOptimizer([("l.weight", layer.GradientProxy)], ["l.weight"], new OptimizerSettings(0.05, 0), opts, new CpuGaLoreCompute(), quantized);
        var before = layer.DenseWeight();
        var grad = torch.randn(8, 5);
        layer.GradientProxy.grad = grad.clone();

        // the float step the optimizer computes on deq(W), done here on a twin float weight
        var twin = new Parameter(before.clone());
        using var floatTwin = new GaLoreOptimizer([("l.weight", twin)], ["l.weight"], new OptimizerSettings(0.05, 0), opts, new CpuGaLoreCompute());
        twin.grad = grad.clone();
        floatTwin.Step(0.05);

        optimizer.Step(0.05);
        layer.Codes.dtype.Should().Be(ScalarType.Int8, "the weight is INT8 between steps");
        var after = layer.DenseWeight();
        var step = layer.Scale.max().item<float>();
        (after - twin).abs().max().item<float>().Should().BeLessThan(step * 1.0001f, "stochastic rounding lands on a neighbouring grid point of the float update");
        (after - before).abs().max().item<float>().Should().BeGreaterThan(0);

        var state = optimizer.GetState();
        state["l.weight.quantized.weight"].dtype.Should().Be(ScalarType.Int8);
        state["l.weight.quantized.weight_scale"].shape.Should().Equal(8);
    }

    /// <summary>A plain dense layer for the quantizer to read.</summary>
    sealed class TestDense(Tensor w) : nn.Module<Tensor, Tensor>("dense"), Peft.Abstractions.Model.ILinearLayer
    {
        public long InFeatures => w.shape[1];
        public long OutFeatures => w.shape[0];
        public nn.Module<Tensor, Tensor> Module => this;
        public Tensor? Bias => null;
        public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32) => w.to_type(dtype).clone();
        public bool CanSetWeight => false;
        public void SetDenseWeight(Tensor weight) => throw new NotSupportedException();
        public override Tensor forward(Tensor x) => x.matmul(w.t());
    }
}
