using Peft.Plugins.Dora;
using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Dora;

/// <summary>
/// DoRA on one layer against formulas computed independently here (HF PEFT semantics, METHODS.md "DoRA"):
/// W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_row with the norm detached, bias outside the scaling.
/// </summary>
[Collection(GlobalRngCollection.Name)]
public sealed class DoraLinearTests
{
    static readonly DoraVariantFactory Dora = DoraVariantFactory.For(torch.CPU);

    static LoraLinear DoraLayer(TestLinear baseLayer, int rank = 3, double alpha = 6, double dropout = 0)
    {
        var layer = new LoraLinear("layer", baseLayer);
        layer.AddAdapter("default", rank, alpha, dropout, variant: Dora);
        return layer;
    }

    static DoraVariant Variant(LoraLinear layer) => (DoraVariant)layer.Variant("default")!;

    /// <summary>Set A, B and m to fixed non-trivial values.</summary>
    static void SetFactors(LoraLinear layer, int seed)
    {
        torch.manual_seed(seed);
        using var _ = torch.no_grad();
        layer.LoraA("default").copy_(torch.randn_like(layer.LoraA("default")) * 0.3);
        layer.LoraB("default").copy_(torch.randn_like(layer.LoraB("default")) * 0.3);
        Variant(layer).Magnitude.copy_(torch.rand_like(Variant(layer).Magnitude) + 0.5);
    }

    /// <summary>y = x (m/‖W+sBA‖ ⊙ (W + sBA))ᵀ + bias, all from plain tensors.</summary>
    static Tensor Formula(Tensor x, Tensor w, Tensor? bias, Tensor a, Tensor b, Tensor m, double s)
    {
        using var scope = torch.NewDisposeScope();
        var combined = w + s * b.matmul(a);
        var norm = combined.pow(2).sum(1).sqrt();
        var merged = (m / norm).unsqueeze(1) * combined;
        var y = x.matmul(merged.t());
        return (bias is null ? y : y + bias).MoveToOuterDisposeScope();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void At_init_the_layer_equals_its_base_and_m_is_the_row_norm_of_W(bool withBias)
    {
        torch.manual_seed(1);
        var baseLayer = TestLinear.Random(24, 10, withBias: withBias);
        using var layer = DoraLayer(baseLayer);
        using var w = baseLayer.DenseWeight();
        using var rowNorms = w.pow(2).sum(1).sqrt();
        TestTensors.MaxAbsDiff(Variant(layer).Magnitude, rowNorms).Should().BeLessThan(1e-6);
        Variant(layer).Magnitude.shape.Should().Equal(10);

        using var x = torch.randn(5, 24);
        using var y = layer.forward(x);
        using var expected = baseLayer.forward(x);
        TestTensors.Identical(y, expected).Should().BeTrue("m is the norm the forward computes, so m/wn − 1 is exactly 0 and B = 0");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Forward_equals_the_DoRA_formula_with_A_B_and_m_set(bool withBias)
    {
        torch.manual_seed(2);
        var baseLayer = TestLinear.Random(12, 7, scale: 0.3, withBias: withBias);
        using var layer = DoraLayer(baseLayer, rank: 3, alpha: 6);
        SetFactors(layer, 3);
        layer.eval();
        using var x = torch.randn(2, 4, 12);
        using var w = baseLayer.DenseWeight();
        using var expected = Formula(x, w, baseLayer.Bias, layer.LoraA("default"), layer.LoraB("default"), Variant(layer).Magnitude.detach(), 2.0);
        using var y = layer.forward(x);
        TestTensors.MaxAbsDiff(y, expected).Should().BeLessThan(1e-5);
        using var baseY = baseLayer.forward(x);
        TestTensors.MaxAbsDiff(y, baseY).Should().BeGreaterThan(1e-2, "A, B and m were set away from init");
    }

    [Fact]
    public void Rslora_scaling_is_used_by_the_norm_and_the_update()
    {
        torch.manual_seed(4);
        var baseLayer = TestLinear.Random(12, 7, scale: 0.3);
        using var layer = new LoraLinear("layer", baseLayer);
        layer.AddAdapter("default", 4, 6, useRsLora: true, variant: Dora);
        SetFactors(layer, 5);
        using var x = torch.randn(3, 12);
        using var w = baseLayer.DenseWeight();
        using var expected = Formula(x, w, null, layer.LoraA("default"), layer.LoraB("default"), Variant(layer).Magnitude.detach(), 6 / Math.Sqrt(4));
        using var y = layer.forward(x);
        TestTensors.MaxAbsDiff(y, expected).Should().BeLessThan(1e-5);
    }

    [Fact]
    public void Dropout_applies_to_the_LoRA_path_and_the_recomputed_base_path_as_in_PEFT()
    {
        torch.manual_seed(6);
        var baseLayer = TestLinear.Random(16, 9, scale: 0.3, withBias: true);
        using var layer = DoraLayer(baseLayer, rank: 2, alpha: 4, dropout: 0.4);
        SetFactors(layer, 7);
        layer.train();
        using var x = torch.randn(6, 16);

        torch.manual_seed(99);
        using var y = layer.forward(x);
        torch.manual_seed(99);
        using var ones = torch.ones_like(x);
        using var mask = nn.functional.dropout(ones, 0.4, training: true);   // the same draw: mask / (1 - p)

        // PEFT: y = base(x) + (m/wn − 1)·W·d(x) + (m/wn)·s·B A d(x), d(x) = dropout(x)
        using var scope = torch.NewDisposeScope();
        var w = baseLayer.DenseWeight();
        var a = layer.LoraA("default").detach();
        var b = layer.LoraB("default").detach();
        var scale = Variant(layer).Magnitude.detach() / (w + 2.0 * b.matmul(a)).pow(2).sum(1).sqrt();
        var d = x * mask;
        var expected = baseLayer.forward(x) + (scale - 1) * d.matmul(w.t()) + scale * 2.0 * d.matmul(a.t()).matmul(b.t());
        TestTensors.MaxAbsDiff(y, expected).Should().BeLessThan(1e-5);

        layer.eval();   // no dropout in eval: the plain formula
        var yEval = layer.forward(x);
        TestTensors.MaxAbsDiff(yEval, Formula(x, w, baseLayer.Bias, a, b, Variant(layer).Magnitude.detach(), 2.0)).Should().BeLessThan(1e-5);
    }

    [Fact]
    public void No_gradient_flows_through_the_norm()
    {
        torch.manual_seed(8);
        var baseLayer = TestLinear.Random(10, 6, scale: 0.3, withBias: true);
        using var layer = DoraLayer(baseLayer, rank: 2, alpha: 2);   // s = 1
        SetFactors(layer, 9);
        using var x = torch.randn(5, 10);
        using var g = torch.randn(5, 6);
        using (var y = layer.forward(x))
        using (var loss = (y * g).sum())
            loss.backward();

        // Hand derivation with wn held constant: y = (m/wn) ⊙ (x Wᵀ + s·x Aᵀ Bᵀ) + bias
        //   dL/dm_j  = Σ_t g_tj (x Wᵀ + s·x Aᵀ Bᵀ)_tj / wn_j
        //   dL/dB_jk = s · Σ_t (m_j/wn_j) g_tj (x Aᵀ)_tk
        using var scope = torch.NewDisposeScope();
        var w = baseLayer.DenseWeight();
        var a = layer.LoraA("default").detach();
        var b = layer.LoraB("default").detach();
        var m = Variant(layer).Magnitude.detach();
        var wn = (w + b.matmul(a)).pow(2).sum(1).sqrt();
        var xa = x.matmul(a.t());                                         // (t, r)
        var directed = x.matmul(w.t()) + xa.matmul(b.t());                // (t, out)
        var dm = (g * directed).sum(dim: 0) / wn;
        var dB = ((m / wn) * g).t().matmul(xa);                           // (out, r)
        TestTensors.MaxAbsDiff(Variant(layer).Magnitude.grad!, dm).Should().BeLessThan(1e-5);
        TestTensors.MaxAbsDiff(layer.LoraB("default").grad!, dB).Should().BeLessThan(1e-5);
        baseLayer.Weight.grad.Should().BeNull("the base is frozen");
    }

    [Fact]
    public void The_expanded_norm_equals_the_direct_norm()
    {
        torch.manual_seed(10);
        foreach (var (inF, outF, r) in new[] { (64, 48, 8), (200, 30, 16), (17, 120, 4) })
        {
            var baseLayer = TestLinear.Random(inF, outF, scale: 0.1, withBias: true);
            using var layer = DoraLayer(baseLayer, rank: r, alpha: 2 * r);
            SetFactors(layer, inF);
            using var _ = torch.no_grad();
            using var expanded = Variant(layer).WeightNorm(layer, "default");
            using var direct = Variant(layer).DirectWeightNorm(layer, "default");
            using var rel = ((expanded - direct).abs() / direct).max();
            rel.item<float>().Should().BeLessThan(1e-5f, $"in {inF}, out {outF}, r {r}");
        }
    }

    [Fact]
    public void The_cached_base_norm_follows_a_merge_of_another_adapter()
    {
        torch.manual_seed(11);
        var baseLayer = TestLinear.Random(20, 8, scale: 0.2);
        using var layer = DoraLayer(baseLayer);
        SetFactors(layer, 12);
        layer.AddAdapter("plain", 2, 4);
        using (torch.no_grad()) layer.LoraB("plain").copy_(torch.randn(8, 2) * 0.3);
        using var x = torch.randn(4, 20);
        using (var warm = layer.forward(x)) { }                           // caches ‖W_i‖²
        layer.Merge("plain");                                           // W changes under DoRA
        using var _ = torch.no_grad();
        using var expanded = Variant(layer).WeightNorm(layer, "default");
        using var direct = Variant(layer).DirectWeightNorm(layer, "default");
        TestTensors.MaxAbsDiff(expanded, direct).Should().BeLessThan(1e-5);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Merge_equals_the_adapter_output_and_unmerge_restores_the_base(bool withBias)
    {
        torch.manual_seed(13);
        var baseLayer = TestLinear.Random(32, 16, scale: 0.2, withBias: withBias);
        using var original = baseLayer.DenseWeight();
        using var layer = DoraLayer(baseLayer, rank: 4, alpha: 8);
        SetFactors(layer, 14);
        using var x = torch.randn(6, 32);
        using var adapterY = layer.forward(x);

        layer.Merge("default");
        using (var mergedW = baseLayer.DenseWeight())
        using (var expectedW = Formula(torch.eye(32), original, null, layer.LoraA("default"), layer.LoraB("default"), Variant(layer).Magnitude.detach(), 2.0).t())
            TestTensors.MaxAbsDiff(mergedW, expectedW).Should().BeLessThan(1e-5, "W' = (m/‖W+sBA‖)(W+sBA)");
        using (var mergedY = layer.forward(x))
            TestTensors.MaxAbsDiff(mergedY, adapterY).Should().BeLessThan(1e-5);

        layer.Unmerge("default");
        using (var restored = baseLayer.DenseWeight())
            TestTensors.MaxAbsDiff(restored, original).Should().BeLessThan(1e-6);
        using (var again = layer.forward(x))
            TestTensors.MaxAbsDiff(again, adapterY).Should().BeLessThan(1e-5);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.2)]
    public void A_training_step_leaves_no_native_tensor_behind(double dropout)
    {
        torch.manual_seed(15);
        var baseLayer = TestLinear.Random(24, 12, withBias: true);
        using var layer = DoraLayer(baseLayer, rank: 4, alpha: 8, dropout: dropout);
        layer.train();
        var trainable = new[] { layer.LoraA("default"), layer.LoraB("default"), Variant(layer).Magnitude };
        using var x = torch.randn(3, 5, 24);
        var live = new List<long>();
        for (int step = 0; step < 6; step++)
        {
            using (var scope = torch.NewDisposeScope())
            {
                var loss = layer.forward(x).pow(2).mean();
                loss.backward();
                using (torch.no_grad())
                    foreach (var p in trainable) { p.sub_(p.grad! * 0.01); }
            }
            foreach (var p in trainable) p.grad = null;
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        live.Skip(1).Should().AllBeEquivalentTo(live[1], $"live tensor counts per step were {string.Join(", ", live)}");
    }

    [Fact]
    public void The_magnitude_is_registered_on_the_layer_under_PEFTs_name()
    {
        var baseLayer = TestLinear.Random(8, 4);
        using var layer = DoraLayer(baseLayer);
        layer.named_parameters().Select(p => p.name).Should().BeEquivalentTo(
            ["base_layer.weight", "lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default.weight"]);
        layer.RemoveAdapter("default");
        layer.named_parameters().Select(p => p.name).Should().Equal("base_layer.weight");
    }
}

