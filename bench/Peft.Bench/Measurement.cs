using System.Text.Json;
using System.Text.Json.Serialization;

namespace Peft.Bench;

/// <summary>What one child process measured, printed as one JSON line after <see cref="Prefix"/>.</summary>
public sealed record Measurement
{
    public const string Prefix = "BENCH_RESULT ";

    [JsonPropertyName("variant")] public required string Variant { get; init; }

    /// <summary>Set when the variant cannot run with this build (e.g. the model lacks activation checkpointing): why.</summary>
    [JsonPropertyName("skipped")] public string? Skipped { get; init; }

    [JsonPropertyName("threads")] public int Threads { get; init; }
    [JsonPropertyName("batch_size")] public int BatchSize { get; init; }
    [JsonPropertyName("seq_len")] public int SeqLen { get; init; }
    [JsonPropertyName("warmup_steps")] public int WarmupSteps { get; init; }
    [JsonPropertyName("timed_steps")] public int TimedSteps { get; init; }
    [JsonPropertyName("timed_seconds")] public double TimedSeconds { get; init; }

    /// <summary>batch_size · seq_len · timed_steps / timed_seconds: every token of the timed optimizer steps.</summary>
    [JsonPropertyName("tokens_per_second")] public double TokensPerSecond { get; init; }
    [JsonPropertyName("median_step_seconds")] public double MedianStepSeconds { get; init; }

    /// <summary>
    /// Median over the timed steps of the process's CPU seconds (user + system, every thread) per step: with one
    /// torch thread, the step's own work, much less disturbed than wall time by other processes on a shared machine.
    /// </summary>
    [JsonPropertyName("median_step_cpu_seconds")] public double? MedianStepCpuSeconds { get; init; }

    /// <summary>With --breakdown: median seconds of each phase of a step (batch, forward, loss, backward, free, clip, optimizer).</summary>
    [JsonPropertyName("phase_median_seconds")] public IReadOnlyDictionary<string, double>? PhaseMedianSeconds { get; init; }

    /// <summary>Every step's wall time, warm-up steps first.</summary>
    [JsonPropertyName("step_seconds")] public IReadOnlyList<double> StepSeconds { get; init; } = [];

    /// <summary>VmRSS just before the training loop: runtime, libtorch, model (and adapter), data.</summary>
    [JsonPropertyName("rss_before_training_bytes")] public long RssBeforeTrainingBytes { get; init; }

    /// <summary>VmHWM at the end: the process's peak resident memory.</summary>
    [JsonPropertyName("peak_rss_bytes")] public long PeakRssBytes { get; init; }

    /// <summary>Live C-heap bytes (glibc mallinfo2, <see cref="Peft.Host.Training.ProcessMemory.HeapInUse"/>) just before the training loop; null off glibc.</summary>
    [JsonPropertyName("heap_before_training_bytes")] public long? HeapBeforeTrainingBytes { get; init; }

    /// <summary>
    /// Peak live C-heap bytes during the training loop, sampled every 5 ms: LibTorch's tensors and every other malloc,
    /// without the free chunks glibc keeps resident (which VmHWM counts and which vary by tens of MB between identical runs).
    /// </summary>
    [JsonPropertyName("peak_heap_bytes")] public long? PeakHeapBytes { get; init; }

    [JsonPropertyName("total_parameters")] public long TotalParameters { get; init; }
    [JsonPropertyName("trainable_parameters")] public long TrainableParameters { get; init; }
    [JsonPropertyName("weight_bytes")] public long WeightBytes { get; init; }
    [JsonPropertyName("gradient_bytes")] public long GradientBytes { get; init; }
    [JsonPropertyName("optimizer_state_bytes")] public long OptimizerStateBytes { get; init; }
    [JsonPropertyName("first_loss")] public double FirstLoss { get; init; }
    [JsonPropertyName("last_loss")] public double LastLoss { get; init; }

    /// <summary>Weights as stored (float parameters + quantized codes and scales), measured from the tensors.</summary>
    [JsonPropertyName("stored_weight_bytes")] public long? StoredWeightBytes { get; init; }

    /// <summary>Most gradient bytes alive at once, measured by optimizers that report it (GaLore); null otherwise.</summary>
    /// <summary>MPI ranks of a data-parallel variant (1 otherwise).</summary>
    [JsonPropertyName("ranks")] public int Ranks { get; init; } = 1;

    /// <summary>Data-parallel variants: rank 0's seconds inside collectives (gradient all-reduce, loss sum) / its training seconds.</summary>
    [JsonPropertyName("communication_share")] public double? CommunicationShare { get; init; }

    [JsonPropertyName("peak_gradient_bytes")] public long? PeakGradientBytes { get; init; }

    public string ToLine() => Prefix + JsonSerializer.Serialize(this);

    public static Measurement? FromLine(string line) =>
        line.StartsWith(Prefix, StringComparison.Ordinal) ? JsonSerializer.Deserialize<Measurement>(line[Prefix.Length..]) : null;
}
