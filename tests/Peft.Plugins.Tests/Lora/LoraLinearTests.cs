using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Lora;

public sealed class LoraLinearTests
{
    static double MaxAbsDiff(Tensor a, Tensor b) => TestTensors.MaxAbsDiff(a, b);

    [Fact]
    public void Seed_acceptance_equals_base_at_init_and_differs_once_B_is_set()
    {
        torch.manual_seed(1);
        var baseLayer = TestLinear.Random(64, 64);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", rank: 4, alpha: 8);
        using var x = torch.randn(5, 64);

        using var expected = baseLayer.forward(x);
        using (var y = lora.forward(x))
            TestTensors.Identical(y, expected).Should().BeTrue("B starts at zero, so the adapter adds exactly nothing");

        using (torch.no_grad()) lora.LoraB("default").fill_(0.1);
        using (var y = lora.forward(x))
            MaxAbsDiff(y, expected).Should().BeGreaterThan(0.001);
    }

    [Fact]
    public void Forward_matches_the_hand_formula()
    {
        torch.manual_seed(2);
        var baseLayer = TestLinear.Random(6, 5, withBias: true);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", rank: 2, alpha: 3);
        using var a = torch.tensor(new float[] { 0.1f, -0.2f, 0.3f, 0.0f, 0.5f, -0.1f, 0.2f, 0.2f, -0.3f, 0.1f, 0.0f, 0.4f }).reshape(2, 6);
        using var b = torch.tensor(new float[] { 1f, 0f, 0f, 1f, 0.5f, -0.5f, 2f, 1f, -1f, 0.25f }).reshape(5, 2);
        using (torch.no_grad()) { lora.LoraA("default").copy_(a); lora.LoraB("default").copy_(b); }
        using var x = torch.randn(3, 6);

        // y = x W^T + bias + (alpha / r) x A^T B^T
        using var w = baseLayer.Weight.detach();
        using var expected = x.matmul(w.t()) + baseLayer.Bias! + (3.0 / 2.0) * x.matmul(a.t()).matmul(b.t());
        using var y = lora.forward(x);
        lora.Scaling("default").Should().Be(1.5);
        MaxAbsDiff(y, expected).Should().BeLessThan(1e-6);
    }

    [Fact]
    public void RsLora_scales_by_alpha_over_sqrt_r()
    {
        torch.manual_seed(3);
        var baseLayer = TestLinear.Random(8, 8);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("plain", rank: 4, alpha: 8);
        lora.AddAdapter("rs", rank: 4, alpha: 8, useRsLora: true);
        lora.Scaling("plain").Should().Be(2.0);   // 8 / 4
        lora.Scaling("rs").Should().Be(4.0);      // 8 / sqrt(4)
        using (torch.no_grad())
        {
            foreach (var n in new[] { "plain", "rs" }) lora.LoraB(n).fill_(0.1);
            lora.LoraA("rs").copy_(lora.LoraA("plain"));
        }
        using var x = torch.randn(2, 8);
        using var y0 = baseLayer.forward(x);

        lora.SetEnabled("rs", false);
        using var yPlain = lora.forward(x);
        lora.SetEnabled("rs", true);
        lora.SetEnabled("plain", false);
        using var yRs = lora.forward(x);

        // Same A and B: the rsLoRA delta is exactly (alpha/sqrt r) / (alpha/r) = sqrt(r) = 2 times the plain one.
        using var dPlain = yPlain - y0;
        using var dRs = yRs - y0;
        MaxAbsDiff(dRs, dPlain * 2).Should().BeLessThan(1e-6);
        MaxAbsDiff(dPlain, torch.zeros_like(dPlain)).Should().BeGreaterThan(1e-3);
    }

    [Fact]
    public void Base_is_frozen_and_gradients_reach_only_A_and_B()
    {
        torch.manual_seed(4);
        var baseLayer = TestLinear.Random(8, 4);
        baseLayer.Weight.requires_grad = true;
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", 2, 4);
        baseLayer.Weight.requires_grad.Should().BeFalse();

        using (torch.no_grad()) lora.LoraB("default").fill_(0.1);
        using var x = torch.randn(3, 8);
        using var loss = lora.forward(x).sum();
        loss.backward();
        lora.LoraA("default").grad.Should().NotBeNull();
        lora.LoraB("default").grad.Should().NotBeNull();
        baseLayer.Weight.grad.Should().BeNull();

        lora.named_parameters().Select(p => p.name).Should().BeEquivalentTo(
            ["base_layer.weight", "lora_A.default.weight", "lora_B.default.weight"]);
    }

    [Fact]
    public void Dropout_applies_only_in_training_mode()
    {
        torch.manual_seed(5);
        var baseLayer = TestLinear.Random(32, 8);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", 4, 4, dropout: 0.5);
        using (torch.no_grad()) lora.LoraB("default").fill_(0.1);
        using var x = torch.randn(16, 32);

        lora.eval();
        using var e1 = lora.forward(x);
        using var e2 = lora.forward(x);
        TestTensors.Identical(e1, e2).Should().BeTrue("no dropout in eval mode");

        lora.train();
        using var t1 = lora.forward(x);
        MaxAbsDiff(t1, e1).Should().BeGreaterThan(1e-4, "dropout changes the adapter path in training mode");
    }

    [Fact]
    public void Merge_then_forward_equals_unmerged_forward_and_unmerge_restores_the_base()
    {
        torch.manual_seed(6);
        var baseLayer = TestLinear.Random(16, 12);
        using var original = baseLayer.DenseWeight();
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", 4, 8, init: LoraInitialization.Random);
        using var x = torch.randn(5, 16);
        using var unmerged = lora.forward(x);

        lora.Merge("default");
        lora.IsMerged("default").Should().BeTrue();
        using (var w = baseLayer.DenseWeight())
        using (var expectedW = original + lora.DeltaWeight("default"))
            MaxAbsDiff(w, expectedW).Should().BeLessThan(1e-6, "W += scaling * B @ A");
        using (var merged = lora.forward(x))
            MaxAbsDiff(merged, unmerged).Should().BeLessThan(1e-5, "a merged adapter is not added a second time");

        lora.Unmerge("default");
        using (var w = baseLayer.DenseWeight())
            MaxAbsDiff(w, original).Should().BeLessThan(1e-6);
        using (var again = lora.forward(x))
            MaxAbsDiff(again, unmerged).Should().BeLessThan(1e-5);
    }

    [Fact]
    public void Two_merged_adapters_unmerge_in_reverse_order()
    {
        torch.manual_seed(7);
        var baseLayer = TestLinear.Random(10, 10);
        using var original = baseLayer.DenseWeight();
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("one", 2, 2, init: LoraInitialization.Random);
        lora.AddAdapter("two", 3, 6, init: LoraInitialization.Random);
        using var x = torch.randn(4, 10);
        using var both = lora.forward(x);
        lora.Merge("one");
        lora.Merge("two");
        using (var y = lora.forward(x)) MaxAbsDiff(y, both).Should().BeLessThan(1e-5);
        lora.UnmergeAll();
        lora.IsMerged("one").Should().BeFalse();
        lora.IsMerged("two").Should().BeFalse();
        using (var w = baseLayer.DenseWeight()) MaxAbsDiff(w, original).Should().BeLessThan(1e-6);
    }

    [Fact]
    public void Safe_merge_refuses_NaN_and_names_the_module()
    {
        torch.manual_seed(8);
        var baseLayer = TestLinear.Random(6, 6);
        using var original = baseLayer.DenseWeight();
        using var lora = new LoraLinear("model.layers.0.self_attn.q_proj", baseLayer);
        lora.AddAdapter("default", 2, 2);
        using (torch.no_grad()) lora.LoraB("default")[0, 0] = float.NaN;

        var act = () => lora.Merge("default", safe: true);
        act.Should().Throw<InvalidOperationException>().WithMessage("*model.layers.0.self_attn.q_proj*non-finite*");
        lora.IsMerged("default").Should().BeFalse();
        using var w = baseLayer.DenseWeight();
        TestTensors.Identical(w, original).Should().BeTrue("a refused merge leaves the base untouched");
    }

    [Fact]
    public void Dense_weight_is_the_effective_weight_and_set_dense_weight_round_trips()
    {
        torch.manual_seed(9);
        var baseLayer = TestLinear.Random(8, 6);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", 2, 4, init: LoraInitialization.Random);
        using var x = torch.randn(3, 8);
        using var y = lora.forward(x);
        using var w = lora.DenseWeight();
        using (var viaDense = x.matmul(w.t())) MaxAbsDiff(viaDense, y).Should().BeLessThan(1e-5);

        using var target = torch.randn(6, 8);
        lora.SetDenseWeight(target);
        using (var back = lora.DenseWeight()) MaxAbsDiff(back, target).Should().BeLessThan(1e-6);
    }

    [Fact]
    public void Removing_adapters_frees_their_parameters()
    {
        var baseLayer = TestLinear.Random(8, 8);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("a", 2, 2);
        lora.AddAdapter("b", 2, 2);
        lora.RemoveAdapter("a").Should().Be(1);
        lora.AdapterNames.Should().Equal("b");
        lora.named_parameters().Select(p => p.name).Should().BeEquivalentTo(["base_layer.weight", "lora_A.b.weight", "lora_B.b.weight"]);
        var act = () => lora.LoraA("a");
        act.Should().Throw<KeyNotFoundException>().WithMessage("*'a'*");
    }

    [Fact]
    public void Moving_the_module_to_another_dtype_keeps_the_factors_reachable()
    {
        torch.manual_seed(10);
        var baseLayer = TestLinear.Random(8, 4);
        using var lora = new LoraLinear("layer", baseLayer);
        lora.AddAdapter("default", 2, 2, init: LoraInitialization.Random);
        using var x = torch.randn(3, 8);
        using var y32 = lora.forward(x);

        lora.to(ScalarType.Float64);
        lora.LoraA("default").dtype.Should().Be(ScalarType.Float64);
        lora.named_parameters().Should().HaveCount(3).And.OnlyContain(p => p.parameter.dtype == ScalarType.Float64);
        using var x64 = x.to(ScalarType.Float64);
        using var y64 = lora.forward(x64);
        TestTensors.MaxAbsDiff(y64, y32).Should().BeLessThan(1e-5);
    }
}
