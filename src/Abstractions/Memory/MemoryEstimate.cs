namespace Peft.Abstractions.Memory;

/// <summary>Bytes a method or optimizer adds, by component, for the memory planner.</summary>
public sealed record MemoryEstimate(long TrainableParameters, long WeightBytes, long GradientBytes, long OptimizerStateBytes)
{
    public long TotalBytes => WeightBytes + GradientBytes + OptimizerStateBytes;
}
