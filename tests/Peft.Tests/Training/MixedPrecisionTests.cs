using System.Text.Json.Nodes;
using Peft.Host.Optimization;
using Peft.Host.Training;
using Peft.Tests.Data;
using TorchSharp;
using TorchSharp.Modules;
using static Peft.Tests.Training.TrainerTestKit;
using static TorchSharp.torch;

namespace Peft.Tests.Training;

/// <summary>
/// training:precision: fp32 master weights and optimizer state, the model copy the bf16 / fp16 cast of the master,
/// fp16's dynamic loss scaling (skip on overflow and halve, double after growth_interval good steps).
/// </summary>
public class MixedPrecisionTests
{
    static Parameter Param(float[] values) => new(torch.tensor(values), requires_grad: true);

    static float[] Cast(float[] values, ScalarType low)
    {
        using var t = torch.tensor(values);
        using var c = t.to(low);
        using var back = c.to(ScalarType.Float32);
        return back.data<float>().ToArray();
    }

    [Theory]
    [InlineData(MixedPrecision.Bf16Mixed, ScalarType.BFloat16)]
    [InlineData(MixedPrecision.Fp16Mixed, ScalarType.Float16)]
    public void The_model_copy_is_the_low_precision_cast_of_the_fp32_master_and_the_optimizer_state_stays_fp32(string mode, ScalarType low)
    {
        // values with more mantissa than bf16 (8 bits) or fp16 (11 bits) hold
        float[] master = [1.0009765f + 1e-4f, -0.333333343f, 3.14159274f, 1e-3f + 3e-7f];
        var p = Param(master);
        using var mp = new MixedPrecision(mode, [("w", p)], initialLossScale: 1);
        using var adam = new AdamWOptimizer([("w", p)], new Peft.Abstractions.Optimization.OptimizerSettings(1e-2, 0, 0.9, 0.999, 1e-8));

        mp.BeginStep();
        // during forward/backward the model holds exactly the low-precision cast of the master, the master stays fp32
        p.data<float>().ToArray().Should().Equal(Cast(master, low));
        p.data<float>().ToArray().Should().NotEqual(master, "the cast loses mantissa bits");
        mp.Masters.Should().ContainSingle();
        mp.Masters[0].Master.dtype.Should().Be(ScalarType.Float32);
        mp.Masters[0].Master.data<float>().ToArray().Should().Equal(master);

        // loss = Σ c_i · w_i  →  grad = c (chosen so the low-precision cast changes it)
        float[] c = [0.1234567f, -2.7182817f, 1.41421354f, 1000.123f];
        using (var cT = torch.tensor(c)) (p * cT).sum().backward();
        mp.EndBackward().Should().BeTrue();

        // after backward the parameter holds the fp32 master again, the gradient is the low-precision gradient
        p.data<float>().ToArray().Should().Equal(master);
        p.grad!.data<float>().ToArray().Should().Equal(Cast(c, low));

        adam.Step(1e-2);
        var state = adam.GetState();
        state.Should().NotBeEmpty();
        state.Values.Where(t => t.is_floating_point()).Should().OnlyContain(t => t.dtype == ScalarType.Float32);
        p.dtype.Should().Be(ScalarType.Float32);
        // the update was applied to the fp32 master (a change below bf16's resolution of the value survives)
        p.data<float>().ToArray().Should().NotEqual(master);
    }

    [Fact]
    public void Fp16_loss_scaling_skips_overflowing_steps_halves_the_scale_and_grows_it_after_good_steps()
    {
        float[] w = [0.5f, -0.25f];
        var p = Param(w);
        using var mp = new MixedPrecision(MixedPrecision.Fp16Mixed, [("w", p)], initialLossScale: 65536, growthInterval: 2);

        // grad 10 · S = 655360 > 65504: the fp16 gradient overflows -> skip, S halves (repeatedly until it fits)
        double Step(float gradient)
        {
            mp.BeginStep();
            using (var g = torch.tensor(new[] { gradient, gradient })) (p * g).sum().mul(mp.LossScale).backward();
            bool applied = mp.EndBackward();
            var result = applied ? p.grad!.data<float>()[0] : double.NaN;
            p.grad!.zero_();
            return result;
        }

        double.IsNaN(Step(10)).Should().BeTrue();
        mp.SkippedSteps.Should().Be(1);
        mp.LossScale.Should().Be(32768);
        p.data<float>().ToArray().Should().Equal(w, "a skipped step leaves the master untouched");
        double.IsNaN(Step(10)).Should().BeTrue();   // 327680 > 65504
        double.IsNaN(Step(10)).Should().BeTrue();   // 163840
        double.IsNaN(Step(10)).Should().BeTrue();   // 81920
        mp.LossScale.Should().Be(4096);
        var g1 = Step(10);                          // 40960 fits: applied, unscaled back to the true gradient
        g1.Should().BeApproximately(10, 10 * 1e-3);
        g1.Should().Be(Cast([10f * 4096], ScalarType.Float16)[0] / 4096.0);
        mp.SkippedSteps.Should().Be(4);
        mp.LossScale.Should().Be(4096, "one good step, growth interval 2");
        Step(1).Should().BeApproximately(1, 1e-3);
        mp.LossScale.Should().Be(8192, "two good steps in a row double the scale");
    }

    [Fact]
    public void Fp32_does_nothing_and_bf16_needs_no_loss_scale()
    {
        var p = Param([1.0009765f]);
        using var fp32 = new MixedPrecision(MixedPrecision.Fp32, [("w", p)]);
        fp32.Active.Should().BeFalse();
        fp32.Masters.Should().BeEmpty();
        fp32.LossScale.Should().Be(1);
        using var bf16 = new MixedPrecision(MixedPrecision.Bf16Mixed, [("w", p)]);
        bf16.LossScale.Should().Be(1);
        new TrainingOptions { Precision = "fp8" }.Validate().Should().Contain(e => e.Key == "precision");
    }

    [Fact]
    public void The_trainer_with_fp16_mixed_skips_overflow_steps_records_them_and_still_learns()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        // an initial scale of 2^40 overflows fp16 for sure: the first steps are skipped until the scale fits
        var options = Options(o => { o.MaxSteps = 30; o.Precision = MixedPrecision.Fp16Mixed; o.LossScale = Math.Pow(2, 40); });
        var result = Trainer.Run(TrainerTestKit.Run(model, Peft.Host.Composition.FullFineTuning.TrainableParameters(model), TinyData(), options, dir.Path));
        var skipped = File.ReadAllLines(Path.Combine(dir.Path, MetricsLog.FileName)).Select(l => JsonNode.Parse(l)!.AsObject())
            .Where(m => m["skipped"] is not null).ToList();
        skipped.Should().NotBeEmpty();
        var scales = skipped.Select(m => m["loss_scale"]!.GetValue<double>()).ToList();
        scales[0].Should().Be(Math.Pow(2, 39));
        scales.Should().BeInDescendingOrder().And.OnlyHaveUniqueItems();
        scales.Zip(scales.Skip(1), (a, b) => a / b).Should().OnlyContain(r => r == 2);
        result.Steps[^1].Loss.Should().BeLessThan(result.Steps[skipped.Count].Loss, "after the skipped steps the loss falls");
        model.NamedParameters().Should().OnlyContain(p => p.Parameter.dtype == ScalarType.Float32);
    }

    [Theory]
    [InlineData(MixedPrecision.Bf16Mixed)]
    [InlineData(MixedPrecision.Fp16Mixed)]
    public void A_mixed_precision_step_leaves_no_tensor_behind(string precision)
    {
        // live TorchSharp tensors after each step: constant once AdamW has its moments (a leaked gradient wrapper
        // would keep every step's old gradients alive)
        using var dir = new TempDirectory();
        var model = TinyModel();
        var live = new List<long>();
        var probe = new CallbackHook(onStepEnd: _ => live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount));
        var options = Options(o => { o.MaxSteps = 8; o.Precision = precision; o.LossScale = 1024; o.LossScaleGrowthInterval = 3; });
        Trainer.Run(TrainerTestKit.Run(model, model.Train("layers.0.up_proj.weight", "lm_head.weight"), TinyData(), options, dir.Path, probe));
        live.Should().HaveCount(8);
        live.Skip(2).Should().AllBeEquivalentTo(live[2], $"live tensor counts per step were {string.Join(", ", live)}");
    }

    [Fact]
    public void Fp16_mixed_is_refused_with_a_layerwise_optimizer()
    {
        var p = Param([1f]);
        var optimizer = new LayerwiseFake();
        var act = () => MixedPrecision.For(new TrainingOptions { Precision = MixedPrecision.Fp16Mixed }, [("w", p)], optimizer);
        act.Should().Throw<Peft.Abstractions.PeftConfigurationException>().WithMessage("*training:precision*layer-wise*");
    }

    sealed class LayerwiseFake : Peft.Abstractions.Optimization.IPeftOptimizer, Peft.Abstractions.Optimization.IBackwardStepOptimizer
    {
        public long StateBytes => 0;
        public void Step(double learningRate) { }
        public void ZeroGrad() { }
        public IReadOnlyDictionary<string, Tensor> GetState() => new Dictionary<string, Tensor>();
        public void LoadState(IReadOnlyDictionary<string, Tensor> state) { }
        public void ReleaseState(IEnumerable<string> parameterNames) { }
        public long PeakGradientBytes => 0;
        public void BeginStep(Peft.Abstractions.Optimization.BackwardStepInfo info) { }
        public void Dispose() { }
    }
}

/// <summary>bf16-mixed against fp32 on stories260K: full fine-tuning through `peft train`, same seed and data.</summary>
// serial: the LoRA initialisation draws from torch's global generator, which parallel test classes also draw from
[Collection(Peft.Tests.Import.SerialStories260KCollection.Name)]
public sealed class MixedPrecisionOnStories260KTests(Peft.Tests.Import.Stories260KFixture fx)
{
    /// <summary>The stated tolerance: bf16-mixed ends within 0.02 nats of fp32's held-out loss (measured: ~0.003 after 30 steps).</summary>
    const double Tolerance = 0.02;

    [Fact]
    public void Bf16_mixed_reaches_the_held_out_loss_of_fp32_within_the_tolerance()
    {
        (double Before, double After) Train(string precision)
        {
            var outDir = fx.NewDir("mp-" + precision);
            // LoRA r 4 on q_proj and v_proj, 16 steps of 4 Alpaca rows (RunKit's run)
            var config = Peft.Tests.Reliability.RunKit.WriteConfig(fx.NewDir("cfg"), fx.ModelDir, outDir, maxSteps: 16, checkpointEvery: 0,
                extraTraining: $", \"precision\": \"{precision}\"");
            var r = Peft.Tests.Reliability.RunKit.Peft("train", "--config", config, "--set", "training:eval_batches=0");
            r.Code.Should().Be(0, r.Err + r.Out);
            var before = r.Out.Split('\n').Single(l => l.StartsWith("step 0: eval loss", StringComparison.Ordinal)).Split(' ')[4];
            var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "training_summary.json")))!;
            return (double.Parse(before, System.Globalization.CultureInfo.InvariantCulture), summary["final_eval_loss"]!.GetValue<double>());
        }
        var fp32 = Train(MixedPrecision.Fp32);
        var bf16 = Train(MixedPrecision.Bf16Mixed);
        bf16.After.Should().BeLessThan(bf16.Before, "bf16-mixed learns");
        bf16.After.Should().BeApproximately(fp32.After, Tolerance);
        bf16.After.Should().NotBe(fp32.After, "the bf16 model copy changes the numerics");
    }
}
