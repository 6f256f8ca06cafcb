using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Optimization;
using Peft.Host.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Optimization;

public class AdamWOptimizerTests
{
    static Parameter Param(params float[] values) => new(torch.tensor(values));

    static void SetGrad(Parameter p, float[] g) => p.grad = torch.tensor(g);

    [Fact]
    public void Three_steps_match_the_AdamW_formulas_computed_by_hand()
    {
        double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
        double[] p = [1.0, -2.0, 0.5];
        double[][] grads = [[0.1, -0.2, 0.3], [-0.5, 0.4, 0.0], [0.2, 0.2, -0.1]];
        var param = Param(p.Select(x => (float)x).ToArray());
        using var optimizer = new AdamWOptimizer([("w", param)], new OptimizerSettings(lr, wd, b1, b2, eps));

        double[] m = new double[3], v = new double[3];
        for (int t = 1; t <= 3; t++)
        {
            var g = grads[t - 1];
            for (int i = 0; i < 3; i++)
            {
                p[i] *= 1 - lr * wd;                                  // decoupled weight decay first
                m[i] = b1 * m[i] + (1 - b1) * g[i];
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
                double denom = Math.Sqrt(v[i]) / Math.Sqrt(1 - Math.Pow(b2, t)) + eps;   // eps outside the sqrt
                p[i] -= lr / (1 - Math.Pow(b1, t)) * m[i] / denom;
            }
            SetGrad(param, g.Select(x => (float)x).ToArray());
            optimizer.Step(lr);
            optimizer.ZeroGrad();
            var actual = param.data<float>().ToArray();
            for (int i = 0; i < 3; i++) actual[i].Should().BeApproximately((float)p[i], 1e-6f, $"element {i} after step {t}");
        }
        optimizer.StepOf("w").Should().Be(3);
        optimizer.StateBytes.Should().Be(2 * 3 * 4 + 8, "two fp32 moments of 3 elements and an int64 step counter");
    }

    [Fact]
    public void Matches_TorchSharp_AdamW_within_1e6_including_a_parameter_that_skips_steps()
    {
        using var gen = new Generator(123);
        using var init1 = torch.randn(4, 5, generator: gen);
        using var init2 = torch.randn(7, generator: gen);
        var ours1 = new Parameter(init1.clone()); var ours2 = new Parameter(init2.clone());
        var ref1 = new Parameter(init1.clone()); var ref2 = new Parameter(init2.clone());
        const double lr = 3e-3, wd = 0.05;
        using var ours = new AdamWOptimizer([("a", ours1), ("b", ours2)], new OptimizerSettings(lr, wd, 0.9, 0.95, 1e-6));
        using var reference = torch.optim.AdamW([ref1, ref2], lr: lr, beta1: 0.9, beta2: 0.95, eps: 1e-6, weight_decay: wd);

        for (int step = 1; step <= 6; step++)
        {
            using var g1 = torch.randn(4, 5, generator: gen);
            using var g2 = torch.randn(7, generator: gen);
            ours1.grad = g1.clone(); ref1.grad = g1.clone();
            if (step % 2 == 1) { ours2.grad = g2.clone(); ref2.grad = g2.clone(); }   // b has no gradient on even steps
            ours.Step(lr);
            reference.step();
            ours.ZeroGrad();
            ref1.grad = null; ref2.grad = null;

            using var d1 = (ours1 - ref1).abs().max();
            using var d2 = (ours2 - ref2).abs().max();
            d1.item<float>().Should().BeLessThan(1e-6f, $"parameter a after step {step}");
            d2.item<float>().Should().BeLessThan(1e-6f, $"parameter b after step {step}");
        }
        ours.StepOf("a").Should().Be(6);
        ours.StepOf("b").Should().Be(3, "a parameter without a gradient is skipped and its counter does not advance");
    }

    [Fact]
    public void State_round_trip_continues_exactly_and_release_frees_it()
    {
        var settings = new OptimizerSettings(0.1, 0.01);
        var p = Param(0.3f, -0.7f);
        var q = Param(1f);
        using var first = new AdamWOptimizer([("p", p), ("q", q)], settings);
        foreach (var g in new[] { new[] { 0.5f, -1f }, new[] { 0.25f, 0.5f } })
        {
            SetGrad(p, g); SetGrad(q, [g[0]]);
            first.Step(0.1); first.ZeroGrad();
        }
        var saved = first.GetState().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        saved.Keys.Should().BeEquivalentTo("p.exp_avg", "p.exp_avg_sq", "p.step", "q.exp_avg", "q.exp_avg_sq", "q.step");
        saved["p.step"].item<long>().Should().Be(2);

        var p2 = new Parameter(p.detach().clone());
        var q2 = new Parameter(q.detach().clone());
        using var second = new AdamWOptimizer([("p", p2), ("q", q2)], settings);
        second.LoadState(saved);
        SetGrad(p, [1f, 1f]); SetGrad(p2, [1f, 1f]);
        first.Step(0.1); second.Step(0.1);
        p2.data<float>().ToArray().Should().Equal(p.data<float>().ToArray(), "the restored state continues bit for bit");

        first.ReleaseState(["p"]);
        first.GetState().Keys.Should().BeEquivalentTo("q.exp_avg", "q.exp_avg_sq", "q.step");
        first.StateBytes.Should().Be(4 + 4 + 8);
        first.StepOf("p").Should().Be(0);
        foreach (var t in saved.Values) t.Dispose();
    }

    [Fact]
    public void A_parameter_whose_requires_grad_is_switched_off_is_neither_decayed_nor_updated_nor_given_state()
    {
        // LISA switches requires_grad between steps: a frozen parameter keeps its bits and costs no state,
        // even if a stale gradient is still attached; switched on again it starts at t = 0.
        var on = Param(1f, 2f);
        var off = Param(3f, 4f);
        using var optimizer = new AdamWOptimizer([("on", on), ("off", off)], new OptimizerSettings(0.1, 0.5));
        off.requires_grad_(false);
        SetGrad(on, [0.1f, 0.1f]);
        SetGrad(off, [0.1f, 0.1f]);
        optimizer.Step(0.1);
        off.data<float>().ToArray().Should().Equal(3f, 4f);
        optimizer.StepOf("off").Should().Be(0);
        optimizer.GetState().Keys.Should().BeEquivalentTo("on.exp_avg", "on.exp_avg_sq", "on.step");
        optimizer.ZeroGrad();
        on.grad.Should().BeNull();
        off.grad.Should().BeNull("zero_grad clears frozen parameters too");

        off.requires_grad_(true);
        SetGrad(off, [0.1f, 0.1f]);
        optimizer.Step(0.1);
        optimizer.StepOf("off").Should().Be(1);
        optimizer.StepOf("on").Should().Be(1, "no gradient this step");
    }

    [Fact]
    public void LoadState_names_the_bad_key()
    {
        var p = Param(1f, 2f);
        using var optimizer = new AdamWOptimizer([("p", p)], new OptimizerSettings(0.1, 0));
        using var avg = torch.zeros(2);
        using var wrongShape = torch.zeros(3);
        using var step = torch.tensor(1L);

        var unknown = () => optimizer.LoadState(new Dictionary<string, Tensor> { ["nope.exp_avg"] = avg });
        unknown.Should().Throw<ArgumentException>().WithMessage("*'nope.exp_avg'*");
        var shape = () => optimizer.LoadState(new Dictionary<string, Tensor> { ["p.exp_avg"] = wrongShape, ["p.exp_avg_sq"] = avg, ["p.step"] = step });
        shape.Should().Throw<ArgumentException>().WithMessage("*'p.exp_avg'*[3]*[2]*");
        var partial = () => optimizer.LoadState(new Dictionary<string, Tensor> { ["p.exp_avg"] = avg });
        partial.Should().Throw<ArgumentException>().WithMessage("*'p'*incomplete*");
    }

    [Fact]
    public void Strategy_is_named_adamw_and_rejects_unknown_keys()
    {
        var strategy = new AdamWStrategy();
        strategy.Name.Should().Be("adamw");
        var ok = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["optimizer:name"] = "adamw" }).Build().GetSection("optimizer");
        using (var optimizer = strategy.Create([("p", Param(1f))], new OptimizerSettings(1e-3, 0), ok)) optimizer.Should().BeOfType<AdamWOptimizer>();
        var bad = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["optimizer:name"] = "adamw", ["optimizer:rank"] = "4" }).Build().GetSection("optimizer");
        var act = () => strategy.Create([("p", Param(1f))], new OptimizerSettings(1e-3, 0), bad);
        act.Should().Throw<PeftConfigurationException>().WithMessage("*optimizer:rank*4*unknown key*");
    }
}
