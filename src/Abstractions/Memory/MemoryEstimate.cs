namespace Peft.Abstractions.Memory;

/// <summary>Bytes a method or optimizer adds, by component, for the memory planner.</summary>
public sealed record MemoryEstimate(long TrainableParameters, long WeightBytes, long GradientBytes, long OptimizerStateBytes)
{
    public long TotalBytes => WeightBytes + GradientBytes + OptimizerStateBytes;

    /// <summary>Number of trainable tensors (per-tensor optimizer counters depend on it); null if not stated.</summary>
    public int? TensorCount { get; init; }
}
