using Peft.Host.Optimization;
using TorchSharp;
using TorchSharp.Modules;

namespace Peft.Tests.Optimization;

public class ScheduleAndClippingTests
{
    // Golden values from HF transformers' lambdas (optimization.py), worked out by hand for warmup 2, total 10:
    //   warm-up:  s / 2                       → 0, 0.5
    //   linear:   (10 − s) / 8                → s=2: 1, s=6: 0.5, s=9: 0.125, s=10: 0
    //   cosine:   ½(1 + cos(π (s − 2) / 8))   → s=4: ½(1 + cos(π/4)) = 0.8535533905932737, s=6: 0.5, s=10: 0
    [Theory]
    [InlineData("constant", 0, 0.0)]
    [InlineData("constant", 1, 0.5)]
    [InlineData("constant", 2, 1.0)]
    [InlineData("constant", 9, 1.0)]
    [InlineData("linear", 0, 0.0)]
    [InlineData("linear", 1, 0.5)]
    [InlineData("linear", 2, 1.0)]
    [InlineData("linear", 6, 0.5)]
    [InlineData("linear", 9, 0.125)]
    [InlineData("linear", 10, 0.0)]
    [InlineData("linear", 12, 0.0)]
    [InlineData("cosine", 1, 0.5)]
    [InlineData("cosine", 2, 1.0)]
    [InlineData("cosine", 4, 0.8535533905932737)]
    [InlineData("cosine", 6, 0.5)]
    [InlineData("cosine", 8, 0.14644660940672627)]
    [InlineData("cosine", 10, 0.0)]
    public void Factors_match_HF_schedules(string kind, int step, double expected)
    {
        var schedule = new LearningRateSchedule(kind, 2e-4, warmupSteps: 2, totalSteps: 10);
        schedule.Factor(step).Should().BeApproximately(expected, 1e-12);
        schedule.LearningRate(step).Should().BeApproximately(2e-4 * expected, 1e-16);
    }

    [Fact]
    public void Without_warmup_the_first_step_uses_the_full_rate()
    {
        new LearningRateSchedule("linear", 1.0, 0, 4).Factor(0).Should().Be(1.0);
        new LearningRateSchedule("linear", 1.0, 0, 4).Factor(1).Should().Be(0.75);
        new LearningRateSchedule("cosine", 1.0, 0, 4).Factor(2).Should().BeApproximately(0.5, 1e-15);
    }

    [Fact]
    public void Clipping_scales_to_max_norm_like_torch()
    {
        var a = new Parameter(torch.zeros(2)) { grad = torch.tensor(new float[] { 3, 4 }) };
        var b = new Parameter(torch.zeros(1)) { grad = torch.tensor(new float[] { 12 }) };
        var frozen = new Parameter(torch.zeros(3));   // no gradient: skipped
        double norm = GradientClipping.ClipByGlobalNorm([a, b, frozen], 6.5);
        norm.Should().BeApproximately(13.0, 1e-5, "sqrt(3² + 4² + 12²)");
        double coefficient = 6.5 / (13.0 + 1e-6);
        a.grad!.data<float>().ToArray().Should().BeEquivalentTo(new[] { 3 * coefficient, 4 * coefficient }.Select(x => (float)x), o => o.Using<float>(c => c.Subject.Should().BeApproximately(c.Expectation, 1e-6f)).WhenTypeIs<float>());
        b.grad!.item<float>().Should().BeApproximately((float)(12 * coefficient), 1e-5f);

        // same as TorchSharp's own clip_grad_norm_
        var c = new Parameter(torch.zeros(2)) { grad = torch.tensor(new float[] { 3, 4 }) };
        var d = new Parameter(torch.zeros(1)) { grad = torch.tensor(new float[] { 12 }) };
        torch.nn.utils.clip_grad_norm_([c, d], 6.5).Should().BeApproximately(norm, 1e-5);
        a.grad!.data<float>().ToArray().Should().Equal(c.grad!.data<float>().ToArray());

        // below the limit nothing changes; max_norm 0 only measures
        var e = new Parameter(torch.zeros(2)) { grad = torch.tensor(new float[] { 0.3f, 0.4f }) };
        GradientClipping.ClipByGlobalNorm([e], 1.0).Should().BeApproximately(0.5, 1e-6);
        e.grad!.data<float>().ToArray().Should().Equal(0.3f, 0.4f);
        GradientClipping.ClipByGlobalNorm([a, b], 0).Should().BeApproximately(6.5, 1e-4);
    }
}
