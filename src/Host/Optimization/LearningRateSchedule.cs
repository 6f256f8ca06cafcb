namespace Peft.Host.Optimization;

/// <summary>
/// Learning-rate multipliers of HF transformers' <c>get_constant_schedule_with_warmup</c>,
/// <c>get_linear_schedule_with_warmup</c> and <c>get_cosine_schedule_with_warmup</c> (num_cycles = 0.5).
/// <see cref="Factor"/>(s) is the multiplier used by optimizer step s (0-based), exactly as the HF
/// <c>LambdaLR</c> gives it: the first step uses factor(0), which is 0 when there is warm-up.
/// <code>
///   warm-up  (s &lt; W):   s / max(1, W)
///   constant (s ≥ W):   1
///   linear   (s ≥ W):   max(0, (N − s) / max(1, N − W))
///   cosine   (s ≥ W):   max(0, ½ (1 + cos(π · 2 · 0.5 · (s − W) / max(1, N − W))))
/// </code>
/// </summary>
public sealed class LearningRateSchedule
{
    public static readonly IReadOnlyList<string> Names = ["constant", "linear", "cosine"];

    public LearningRateSchedule(string kind, double baseLearningRate, int warmupSteps, int totalSteps)
    {
        if (!Names.Contains(kind)) throw new ArgumentException($"unknown learning-rate schedule '{kind}' (expected one of {string.Join(", ", Names)})", nameof(kind));
        if (warmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, "must be >= 0");
        if (totalSteps < 0) throw new ArgumentOutOfRangeException(nameof(totalSteps), totalSteps, "must be >= 0");
        Kind = kind;
        BaseLearningRate = baseLearningRate;
        WarmupSteps = warmupSteps;
        TotalSteps = totalSteps;
    }

    public string Kind { get; }
    public double BaseLearningRate { get; }
    public int WarmupSteps { get; }
    public int TotalSteps { get; }

    /// <summary>Learning rate of optimizer step <paramref name="step"/> (0-based).</summary>
    public double LearningRate(int step) => BaseLearningRate * Factor(step);

    public double Factor(int step)
    {
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        switch (Kind)
        {
            case "constant":
                return 1.0;
            case "linear":
                return Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps));
            default:
                const double numCycles = 0.5;
                double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * numCycles * 2.0 * progress)));
        }
    }
}
