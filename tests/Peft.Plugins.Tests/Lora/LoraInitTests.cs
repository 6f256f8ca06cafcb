using Peft.Abstractions;
using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Lora;

[Collection(GlobalRngCollection.Name)]
public sealed class LoraInitTests
{
    [Fact]
    public void Default_init_is_kaiming_uniform_A_and_zero_B()
    {
        torch.manual_seed(11);
        using var lora = new LoraLinear("layer", TestLinear.Random(400, 30));
        lora.AddAdapter("default", rank: 64, alpha: 16);
        var a = lora.LoraA("default");
        // kaiming_uniform(a = sqrt(5)) on (r, in): U(-b, b) with b = gain * sqrt(3 / in), gain = sqrt(2 / (1 + 5)) -> b = 1/sqrt(in).
        double bound = 1 / Math.Sqrt(400);
        using (var max = a.abs().max()) max.item<float>().Should().BeLessThanOrEqualTo((float)bound).And.BeGreaterThan((float)(0.95 * bound));
        using (var std = a.std()) std.item<float>().Should().BeApproximately((float)(bound / Math.Sqrt(3)), 0.002f);
        using (var maxB = lora.LoraB("default").abs().max()) maxB.item<float>().Should().Be(0);
    }

    [Fact]
    public void Gaussian_init_has_std_one_over_r()
    {
        torch.manual_seed(12);
        using var lora = new LoraLinear("layer", TestLinear.Random(500, 20));
        lora.AddAdapter("default", rank: 8, alpha: 8, init: LoraInitialization.Gaussian);
        using (var std = lora.LoraA("default").std()) std.item<float>().Should().BeApproximately(1f / 8, 0.004f);
        using (var maxB = lora.LoraB("default").abs().max()) maxB.item<float>().Should().Be(0);
    }

    [Fact]
    public void Init_uses_the_global_torch_generator()
    {
        Tensor Init(long seed)
        {
            torch.manual_seed(seed);
            var lora = new LoraLinear("layer", new TestLinear(torch.zeros(4, 16)));
            lora.AddAdapter("default", 4, 4);
            return lora.LoraA("default").detach().clone();
        }
        using var a1 = Init(99);
        using var a2 = Init(99);
        using var a3 = Init(100);
        TestTensors.Identical(a1, a2).Should().BeTrue();
        TestTensors.Identical(a1, a3).Should().BeFalse();
    }

    [Fact]
    public void Pissa_keeps_the_output_and_takes_the_top_singular_triplets()
    {
        torch.manual_seed(13);
        var baseLayer = TestLinear.Random(12, 10, scale: 0.3);
        using var w = baseLayer.DenseWeight();
        using var lora = new LoraLinear("layer", baseLayer);
        const int r = 3;
        lora.AddAdapter("default", rank: r, alpha: 6, init: LoraInitialization.Pissa);   // scaling 2
        double scaling = lora.Scaling("default");
        using var residual = baseLayer.DenseWeight();
        using var delta = lora.DeltaWeight("default");

        // residual + scaling * B @ A == W
        using (var sum = residual + delta) TestTensors.MaxAbsDiff(sum, w).Should().BeLessThan(1e-4);
        using (var x = torch.randn(4, 12))
        using (var y = lora.forward(x))
        using (var y0 = x.matmul(w.t()))
            TestTensors.MaxAbsDiff(y, y0).Should().BeLessThan(1e-4, "the layer output is unchanged at init");

        // scaling * B @ A is the best rank-r approximation: the residual's singular values are W's beyond the r-th.
        using var sW = torch.linalg.svdvals(w);
        using var sRes = torch.linalg.svdvals(residual);
        using (var tail = sW[r..]) TestTensors.MaxAbsDiff(sRes[..(10 - r)], tail).Should().BeLessThan(1e-4);
        // A = diag(sqrt(S_r / scaling)) Vh_r has orthogonal rows: A A^T = diag(S_r / scaling); likewise B^T B.
        var a = lora.LoraA("default");
        var b = lora.LoraB("default");
        using var expectedGram = torch.diag(sW[..r] / scaling);
        using (var aat = a.matmul(a.t())) TestTensors.MaxAbsDiff(aat, expectedGram).Should().BeLessThan(1e-4);
        using (var btb = b.t().matmul(b)) TestTensors.MaxAbsDiff(btb, expectedGram).Should().BeLessThan(1e-4);
    }

    [Fact]
    public void Pissa_through_the_method_rewrites_the_base_and_rolls_back_on_error()
    {
        torch.manual_seed(14);
        var model = FakeLlamaModel.Tiny();
        using var q0 = model.GetLinear("model.layers.0.self_attn.q_proj").DenseWeight();
        using var v0 = model.GetLinear("model.layers.0.self_attn.v_proj").DenseWeight();
        // v_proj is 16 -> 8: rank 12 > min(in, out) fails on the first v_proj after q_proj of layer 0 was initialized.
        var act = () => new LoraMethod().Attach(model, "default", LoraConfig.Section("""{ "r": 12, "init_lora_weights": "pissa" }"""));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*init_lora_weights*pissa*min(in, out)*");
        model.GetLinear("model.layers.0.self_attn.q_proj").Should().BeOfType<TestLinear>();
        using (var q = model.GetLinear("model.layers.0.self_attn.q_proj").DenseWeight())
            TestTensors.MaxAbsDiff(q, q0).Should().BeLessThan(1e-5, "the residual is undone when the attach is rolled back");

        var adapter = new LoraMethod().Attach(model, "default", LoraConfig.Section("""{ "r": 4, "init_lora_weights": "pissa" }"""));
        var layer = ((LoraAdapter)adapter).Layer("model.layers.0.self_attn.v_proj");
        using var residual = layer.BaseLayer.DenseWeight();
        TestTensors.MaxAbsDiff(residual, v0).Should().BeGreaterThan(1e-3, "PiSSA moved the principal part out of the base");
        using var full = layer.DenseWeight();
        TestTensors.MaxAbsDiff(full, v0).Should().BeLessThan(1e-4);
        adapter.ToAdapterConfig()["init_lora_weights"]!.GetValue<string>().Should().Be("pissa");
    }
}
