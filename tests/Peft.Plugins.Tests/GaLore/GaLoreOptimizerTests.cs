using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Optimization;
using Peft.Host.Optimization;
using Peft.Plugins.GaLore;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.GaLore;

[Collection(Peft.Plugins.Tests.QLora.QLoraSerialCollection.Name)]   // FakeLlamaModel draws from torch's global generator
public class GaLoreOptimizerTests
{
    static GaLoreOptions Options(string projType = "std", int rank = 3, int gap = 200, double scale = 0.25) =>
        new() { ProjType = projType, Rank = rank, UpdateProjGap = gap, Scale = scale };

    static Tensor RandomMatrix(long m, long n, long seed)
    {
        using var gen = new Generator((ulong)seed);
        return torch.randn(m, n, generator: gen);
    }

    // The official galore_torch shapes: projected gradient (= Adam moments) per proj_type, tall (12, 6) and wide (6, 12), rank 3.
    [Theory]
    [InlineData("std", 12, 6, 12, 3)]
    [InlineData("std", 6, 12, 3, 12)]
    [InlineData("reverse_std", 12, 6, 3, 6)]
    [InlineData("reverse_std", 6, 12, 6, 3)]
    [InlineData("right", 12, 6, 12, 3)]
    [InlineData("right", 6, 12, 6, 3)]
    [InlineData("left", 12, 6, 3, 6)]
    [InlineData("left", 6, 12, 3, 12)]
    [InlineData("full", 12, 6, 3, 3)]
    [InlineData("full", 6, 12, 3, 3)]
    public void Projected_gradient_and_moments_have_the_official_shapes(string projType, long m, long n, long rows, long columns)
    {
        using var scope = torch.NewDisposeScope();
        var w = new Parameter(RandomMatrix(m, n, 1));
        using var optimizer = new GaLoreOptimizer([("w", w)], ["w"], new OptimizerSettings(1e-3, 0), Options(projType), new CpuGaLoreCompute());
        w.grad = RandomMatrix(m, n, 2);
        optimizer.Step(1e-3);

        var state = optimizer.StateOf("w")!;
        state.Projector!.ProjectedShape.Should().Equal(rows, columns);
        state.ExpAvg.shape.Should().Equal(rows, columns);
        state.ExpAvgSq.shape.Should().Equal(rows, columns);
        using var g = RandomMatrix(m, n, 3);
        using var low = state.Projector.Project(g, 1);
        low.shape.Should().Equal(rows, columns);
        using var back = state.Projector.ProjectBack(low);
        back.shape.Should().Equal(m, n);
    }

    /// <summary>
    /// The update computed here in float64 from the definition: SVD of the first gradient, with the signs of the
    /// singular vectors flipped at random (a projector is only defined up to those signs), two Adam steps in the
    /// projected space (HF ε placement, as galore_torch), projected back × α, decoupled weight decay after.
    /// </summary>
    [Theory]
    [InlineData("std", 10, 4)]
    [InlineData("std", 4, 10)]
    [InlineData("reverse_std", 10, 4)]
    [InlineData("left", 10, 4)]
    [InlineData("right", 4, 10)]
    [InlineData("full", 7, 9)]
    public void Two_steps_equal_an_independent_computation_whatever_the_svd_signs(string projType, long m, long n)
    {
        using var scope = torch.NewDisposeScope();
        // ε = 1e-4: with `full`, the first projected gradient Urᵀ G1 Vrᵀ is diag(σ1, σ2) and its off-diagonal entries are
        // float32 round-off (~1e-7) that Adam's m/(sqrt(v) + ε) would blow up to O(1) with ε = 1e-8 (float64 gives 1e-16).
        const double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-4, alpha = 0.25;
        const int rank = 2;
        var w0 = RandomMatrix(m, n, 11);
        var g1 = RandomMatrix(m, n, 12);
        var g2 = RandomMatrix(m, n, 13);
        var w = new Parameter(w0.clone());
        using var optimizer = new GaLoreOptimizer([("w", w)], ["w"], new OptimizerSettings(lr, wd, b1, b2, eps), Options(projType, rank, gap: 200, scale: alpha), new CpuGaLoreCompute());
        foreach (var g in new[] { g1, g2 })
        {
            w.grad = g.clone();
            optimizer.Step(lr);
            optimizer.ZeroGrad();
        }

        // independent float64 computation
        var (u, _, vh) = torch.linalg.svd(g1.to_type(ScalarType.Float64), fullMatrices: false);
        var flips = torch.tensor(new double[] { -1, 1, -1, 1 }.Take(rank).ToArray(), ScalarType.Float64);
        var left = u.narrow(1, 0, rank) * flips;                  // U_r with flipped column signs
        var right = vh.narrow(0, 0, rank) * flips.unsqueeze(1);   // Vh_r with flipped row signs
        var side = GaLoreProjector.SideOf(GaLoreOptions.ParseProjType(projType)!.Value, m, n);
        Tensor Project(Tensor g) => side switch
        {
            GaLoreProjector.Side.Right => g.matmul(right.t()),
            GaLoreProjector.Side.Left => left.t().matmul(g),
            _ => left.t().matmul(g).matmul(right.t()),
        };
        Tensor Back(Tensor r) => side switch
        {
            GaLoreProjector.Side.Right => r.matmul(right),
            GaLoreProjector.Side.Left => left.matmul(r),
            _ => left.matmul(r).matmul(right),
        };
        var p = w0.to_type(ScalarType.Float64);
        Tensor? mom = null, vel = null;
        int t = 0;
        foreach (var g in new[] { g1, g2 })
        {
            t++;
            var r = Project(g.to_type(ScalarType.Float64));
            mom = (mom is null ? torch.zeros_like(r) : mom) * b1 + r * (1 - b1);
            vel = (vel is null ? torch.zeros_like(r) : vel) * b2 + r * r * (1 - b2);
            var n1 = mom / (vel.sqrt() + eps);
            double stepSize = lr * Math.Sqrt(1 - Math.Pow(b2, t)) / (1 - Math.Pow(b1, t));
            p = p - stepSize * alpha * Back(n1);
            p = p - lr * wd * p;
        }
        var actual = w.to_type(ScalarType.Float64);
        var moved = (p - w0.to_type(ScalarType.Float64)).abs().max().item<double>();
        moved.Should().BeGreaterThan(1e-3, "the step must move the weight");
        (actual - p).abs().max().item<double>().Should().BeLessThan(2e-6);
        optimizer.StateOf("w")!.Step.Should().Be(2);
    }

    [Fact]
    public void Parameters_it_does_not_target_get_exactly_the_hosts_AdamW()
    {
        using var scope = torch.NewDisposeScope();
        var settings = new OptimizerSettings(3e-3, 0.05, 0.9, 0.95, 1e-6);
        var a = new Parameter(RandomMatrix(5, 4, 1)); var b = new Parameter(RandomMatrix(5, 4, 1));
        var target = new Parameter(RandomMatrix(8, 6, 2));
        using var galore = new GaLoreOptimizer([("x", a), ("t", target)], ["t"], settings, Options(), new CpuGaLoreCompute());
        using var adamw = new AdamWOptimizer([("x", b)], settings);
        for (int s = 0; s < 4; s++)
        {
            var g = RandomMatrix(5, 4, 100 + s);
            a.grad = g.clone(); b.grad = g.clone(); target.grad = RandomMatrix(8, 6, 200 + s);
            galore.Step(3e-3); adamw.Step(3e-3);
            galore.ZeroGrad(); adamw.ZeroGrad();
        }
        a.bytes.ToArray().Should().Equal(b.bytes.ToArray(), "AdamUpdate is the one copy of Adam's arithmetic");
        galore.StateOf("x")!.ExpAvg.shape.Should().Equal(5, 4);
    }

    // State read from the tensors GetState returns (what a checkpoint stores).
    [Theory]
    [InlineData("std", 24, 10)]
    [InlineData("std", 10, 24)]
    [InlineData("full", 24, 10)]
    public void Optimizer_state_held_is_2_r_max_m_n_floats_for_std_and_2_r_r_for_full(string projType, long m, long n)
    {
        using var scope = torch.NewDisposeScope();
        const int r = 4;
        var w = new Parameter(RandomMatrix(m, n, 1));
        using var optimizer = new GaLoreOptimizer([("w", w)], ["w"], new OptimizerSettings(1e-3, 0), Options(projType, r), new CpuGaLoreCompute());
        w.grad = RandomMatrix(m, n, 2);
        optimizer.Step(1e-3);
        var state = optimizer.GetState();
        long moments = state["w.exp_avg"].numel() + state["w.exp_avg_sq"].numel();
        long projector = state.Where(kv => kv.Key.Contains(".projector_")).Sum(kv => kv.Value.numel());
        if (projType == "std")
        {
            moments.Should().Be(2 * r * Math.Max(m, n));
            projector.Should().Be(r * Math.Min(m, n), "the projector sits on the smaller side");
        }
        else
        {
            moments.Should().Be(2 * r * r);
            projector.Should().Be(r * (m + n), "U_r (m, r) and Vh_r (r, n)");
        }
        state.Values.Where(t => t.dtype == ScalarType.Float32).Sum(t => t.numel() * 4).Should().Be(optimizer.StateBytes - 8, "StateBytes counts the same tensors plus the int64 step");
    }

    [Fact]
    public void With_gap_1_the_projector_follows_every_gradient_and_with_a_long_gap_it_stays()
    {
        using var scope = torch.NewDisposeScope();
        foreach (var (gap, changes) in new[] { (1, true), (200, false) })
        {
            var w = new Parameter(RandomMatrix(9, 5, 1));
            using var optimizer = new GaLoreOptimizer([("w", w)], ["w"], new OptimizerSettings(1e-3, 0), Options("std", 2, gap), new CpuGaLoreCompute());
            Tensor? previous = null;
            for (int s = 0; s < 3; s++)
            {
                w.grad = RandomMatrix(9, 5, 50 + s);
                optimizer.Step(1e-3);
                var now = optimizer.StateOf("w")!.Projector!.Right!.clone();
                if (previous is not null) torch.allclose(now, previous).Should().Be(!changes, $"gap {gap}, step {s}");
                previous = now;
            }
        }
    }

    [Fact]
    public void State_round_trips_and_a_restored_optimizer_continues_bit_identically()
    {
        using var scope = torch.NewDisposeScope();
        var settings = new OptimizerSettings(1e-2, 0.01);
        var w1 = new Parameter(RandomMatrix(8, 5, 1)); var w2 = new Parameter(RandomMatrix(8, 5, 1));
        var o = Options("full", 2, gap: 2);
        using var first = new GaLoreOptimizer([("w", w1)], ["w"], settings, o, new CpuGaLoreCompute());
        using var second = new GaLoreOptimizer([("w", w2)], ["w"], settings, o, new CpuGaLoreCompute());
        for (int s = 0; s < 3; s++) { w1.grad = RandomMatrix(8, 5, 10 + s); first.Step(1e-2); first.ZeroGrad(); }
        using (torch.no_grad()) w2.copy_(w1);
        second.LoadState(first.GetState());
        for (int s = 3; s < 6; s++)
        {
            w1.grad = RandomMatrix(8, 5, 10 + s); first.Step(1e-2); first.ZeroGrad();
            w2.grad = RandomMatrix(8, 5, 10 + s); second.Step(1e-2); second.ZeroGrad();
        }
        w2.bytes.ToArray().Should().Equal(w1.bytes.ToArray());

        var bad = first.GetState().ToDictionary(kv => kv.Key, kv => kv.Value);
        bad["w.exp_avg"] = torch.zeros(8, 5);
        var act = () => second.LoadState(bad);
        act.Should().Throw<ArgumentException>().WithMessage("*'w.exp_avg' has shape [8, 5], expected [2, 2]*");
    }

    [Fact]
    public void Options_bind_the_official_names_and_reject_bad_values_naming_the_key()
    {
        IConfigurationSection Section(params (string, string)[] pairs) => new ConfigurationBuilder()
            .AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>("optimizer:" + p.Item1, p.Item2))).Build().GetSection("optimizer");
        var o = GaLoreOptions.FromConfiguration(Section(("name", "galore"), ("rank", "16"), ("update_proj_gap", "50"), ("scale", "0.5"), ("proj_type", "full"), ("layerwise", "true")));
        (o.Rank, o.UpdateProjGap, o.Scale, o.ProjectionType, o.Layerwise).Should().Be((16, 50, 0.5, GaLoreProjectionType.Full, true));
        var defaults = GaLoreOptions.FromConfiguration(Section(("name", "galore")));
        (defaults.Rank, defaults.UpdateProjGap, defaults.Scale, defaults.ProjectionType).Should().Be((128, 200, 0.25, GaLoreProjectionType.Std));
        ((Action)(() => GaLoreOptions.FromConfiguration(Section(("proj_type", "diagonal"))))).Should().Throw<PeftConfigurationException>().WithMessage("*optimizer:proj_type*diagonal*");
        ((Action)(() => GaLoreOptions.FromConfiguration(Section(("rank", "0"))))).Should().Throw<PeftConfigurationException>().WithMessage("*optimizer:rank*0*");
        ((Action)(() => GaLoreOptions.FromConfiguration(Section(("ranks", "8"))))).Should().Throw<PeftConfigurationException>().WithMessage("*optimizer:ranks*unknown key*");
    }

    [Fact]
    public void Default_targets_are_the_attention_and_mlp_weights_never_the_head()
    {
        using var scope = torch.NewDisposeScope();
        var model = FakeLlamaModel.Tiny(layers: 2);
        var trainable = model.NamedParameters().ToList();
        foreach (var (_, p) in trainable) p.requires_grad_(true);
        var targets = GaLoreStrategy.TargetParameters(model, trainable, new GaLoreOptions(), "optimizer");
        targets.Should().HaveCount(2 * 7).And.NotContain(t => t.StartsWith("lm_head"));
        var onlyQ = GaLoreStrategy.TargetParameters(model, trainable, new GaLoreOptions { TargetModules = ["q_proj"] }, "optimizer");
        onlyQ.Should().HaveCount(2);
        var bad = () => GaLoreStrategy.TargetParameters(model, trainable, new GaLoreOptions { TargetModules = ["qproj"] }, "optimizer");
        bad.Should().Throw<PeftConfigurationException>().WithMessage("*optimizer:target_modules*qproj*");
    }
}
