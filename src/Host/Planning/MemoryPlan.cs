namespace Peft.Host.Planning;

/// <summary>Bytes by component for the whole run (one replica, or everything before sharding).</summary>
public sealed record MemoryComponents
{
    /// <summary>Weights that do not train: the frozen base (quantized codes for a quantized base).</summary>
    public long BaseWeightBytes { get; init; }
    /// <summary>Weights that train: adapters, or the whole model (full, GaLore, LISA).</summary>
    public long TrainableWeightBytes { get; init; }
    public long GradientBytes { get; init; }
    /// <summary>Optimizer moments and counters.</summary>
    public long OptimizerStateBytes { get; init; }
    /// <summary>fp32 master copy of 16-bit trainable weights (mixed precision).</summary>
    public long MasterWeightBytes { get; init; }
    /// <summary>Quantization block statistics (absmax, nested absmax, scales).</summary>
    public long QuantizationStatisticsBytes { get; init; }
    /// <summary>GaLore projection matrices.</summary>
    public long ProjectionBytes { get; init; }
    /// <summary>Tensors saved for backward (per GPU: the batch is per GPU).</summary>
    public long ActivationBytes { get; init; }

    public long TotalBytes => BaseWeightBytes + TrainableWeightBytes + GradientBytes + OptimizerStateBytes + MasterWeightBytes
                              + QuantizationStatisticsBytes + ProjectionBytes + ActivationBytes;

    /// <summary>
    /// What one of <paramref name="gpus"/> data-parallel GPUs holds under ZeRO <paramref name="stage"/>: stage 1 shards
    /// optimizer state, master weights and projections; stage 2 also gradients; stage 3 also weights and
    /// quantization statistics. Activations are per GPU (each GPU runs its own micro-batch).
    /// </summary>
    public MemoryComponents PerGpu(int gpus, int stage)
    {
        long S(long bytes, bool shard) => shard ? (bytes + gpus - 1) / gpus : bytes;
        return new MemoryComponents
        {
            BaseWeightBytes = S(BaseWeightBytes, stage >= 3),
            TrainableWeightBytes = S(TrainableWeightBytes, stage >= 3),
            QuantizationStatisticsBytes = S(QuantizationStatisticsBytes, stage >= 3),
            GradientBytes = S(GradientBytes, stage >= 2),
            OptimizerStateBytes = S(OptimizerStateBytes, stage >= 1),
            MasterWeightBytes = S(MasterWeightBytes, stage >= 1),
            ProjectionBytes = S(ProjectionBytes, stage >= 1),
            ActivationBytes = ActivationBytes,
        };
    }

    /// <summary>(JSON key, label, bytes) in display order.</summary>
    public IReadOnlyList<(string Key, string Label, long Bytes)> Rows() =>
    [
        ("base_weight_bytes", "base weights (frozen)", BaseWeightBytes),
        ("quantization_statistics_bytes", "quantization statistics", QuantizationStatisticsBytes),
        ("trainable_weight_bytes", "trainable weights", TrainableWeightBytes),
        ("gradient_bytes", "gradients", GradientBytes),
        ("optimizer_state_bytes", "optimizer state", OptimizerStateBytes),
        ("master_weight_bytes", "master weights (fp32)", MasterWeightBytes),
        ("projection_bytes", "projection matrices", ProjectionBytes),
        ("activation_bytes", "activations", ActivationBytes),
    ];
}

/// <summary>The result of <see cref="MemoryPlanner.Plan"/>: what a run holds, per GPU, and how many GPUs it needs.</summary>
public sealed record MemoryPlan
{
    public required string Model { get; init; }
    public required string Label { get; init; }
    public required PlanSettings Settings { get; init; }
    public required long TotalParameters { get; init; }
    public required long TrainableParameters { get; init; }
    /// <summary>Parameters the method adds to the model (an adapter's); 0 for full fine-tuning.</summary>
    public long AddedParameters { get; init; }
    /// <summary>The part of <see cref="MemoryComponents.BaseWeightBytes"/> held as quantized codes (the rest of a quantized layer's bytes are its statistics).</summary>
    public long QuantizedBaseCodeBytes { get; init; }
    /// <summary>Trainable parameters holding gradients and optimizer state at once (LISA: k layers' worth).</summary>
    public required long ActiveTrainableParameters { get; init; }
    public required MemoryComponents Bytes { get; init; }
    /// <summary>Activation split: decoder layers, head (logits), up-cast weight copies.</summary>
    public ActivationBreakdown? Activations { get; init; }
    /// <summary>Where each component's figure came from ("method lora: lora plugin's EstimateMemory").</summary>
    public required IReadOnlyList<string> Sources { get; init; }
    public required IReadOnlyList<string> Notes { get; init; }
    /// <summary>True for the seed's simplified arithmetic (<c>--seed-assumptions</c>).</summary>
    public bool SeedAssumptions { get; init; }

    public MemoryComponents PerGpu => Bytes.PerGpu(Settings.Gpus, Settings.ZeroStage);

    public bool? Fits => Settings.GpuMemoryBytes is { } m ? PerGpu.TotalBytes <= m : null;

    /// <summary>Fewest GPUs of <see cref="PlanSettings.GpuMemoryBytes"/> that hold the run at <paramref name="stage"/>; null when none does (or no size given).</summary>
    public int? MinimumGpus(int stage)
    {
        if (Settings.GpuMemoryBytes is not { } m) return null;
        if (Bytes.PerGpu(1, stage).TotalBytes <= m) return 1;
        if (stage == 0) return null;
        // per-GPU bytes fall as N grows and never below the unsharded part: check that floor first
        if (Bytes.PerGpu(int.MaxValue, stage).TotalBytes > m) return null;
        int lo = 1, hi = 2;
        while (Bytes.PerGpu(hi, stage).TotalBytes > m) { lo = hi; hi = hi > int.MaxValue / 2 ? int.MaxValue : hi * 2; }
        while (hi - lo > 1)
        {
            int mid = lo + (hi - lo) / 2;
            if (Bytes.PerGpu(mid, stage).TotalBytes <= m) hi = mid; else lo = mid;
        }
        return hi;
    }
}
