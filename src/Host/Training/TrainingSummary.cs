using System.Globalization;
using System.Text.Json.Serialization;
using Peft.Abstractions.Optimization;
using Peft.Host.Model;
using TorchSharp.Modules;

namespace Peft.Host.Training;

/// <summary>What is trained and what it costs in memory: parameters (trainable and their share), bytes of weights, gradients and optimizer state.</summary>
public sealed record TrainingSummary
{
    [JsonPropertyName("total_parameters")] public long TotalParameters { get; init; }
    [JsonPropertyName("trainable_parameters")] public long TrainableParameters { get; init; }
    [JsonPropertyName("trainable_share")] public double TrainableShare { get; init; }

    /// <summary>Bytes of every parameter in its storage dtype (bf16 base weights count 2 bytes).</summary>
    [JsonPropertyName("weight_bytes")] public long WeightBytes { get; init; }

    /// <summary>Bytes of the gradients of the trainable parameters (one per element, their dtype).</summary>
    [JsonPropertyName("gradient_bytes")] public long GradientBytes { get; init; }

    /// <summary>Bytes of optimizer state held (measured; 0 before the first step).</summary>
    [JsonPropertyName("optimizer_state_bytes")] public long OptimizerStateBytes { get; init; }

    [JsonPropertyName("train_examples")] public int TrainExamples { get; init; }
    [JsonPropertyName("validation_examples")] public int ValidationExamples { get; init; }
    [JsonPropertyName("total_steps")] public int TotalSteps { get; init; }
    [JsonPropertyName("final_step")] public int FinalStep { get; init; }
    /// <summary>
    /// The last loss printed and written to metrics.jsonl: the mean training loss over the steps
    /// <see cref="FinalLossSteps"/> (first, last), i.e. since the previous log line (training:log_every).
    /// </summary>
    [JsonPropertyName("final_loss")] public double? FinalLoss { get; init; }

    /// <summary>The first and last step <see cref="FinalLoss"/> averages over.</summary>
    [JsonPropertyName("final_loss_steps")] public int[]? FinalLossSteps { get; init; }

    /// <summary>The loss of the final optimizer step alone.</summary>
    [JsonPropertyName("last_step_loss")] public double? LastStepLoss { get; init; }
    [JsonPropertyName("final_eval_loss")] public double? FinalEvalLoss { get; init; }
    [JsonPropertyName("elapsed_s")] public double ElapsedSeconds { get; init; }

    /// <summary>What the run holds, measured from its tensors (see <see cref="Training.HeldMemory"/>); what <c>peft plan --config</c> predicts.</summary>
    [JsonPropertyName("held_memory"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public HeldMemory? HeldMemory { get; init; }

    /// <summary>The training hooks' final states (LISA: the layers active in each interval), as in checkpoints; absent without hooks.</summary>
    [JsonPropertyName("hooks"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public System.Text.Json.Nodes.JsonArray? Hooks { get; init; }

    public static TrainingSummary Measure(ICausalLanguageModel model, IReadOnlyList<(string Name, Parameter Parameter)> trainable, IPeftOptimizer optimizer)
    {
        long total = 0, weightBytes = 0;
        var seen = new HashSet<IntPtr>();
        foreach (var (_, p) in model.NamedParameters())
        {
            if (!seen.Add(p.Handle)) continue; // tied weights once
            total += p.NumberOfElements;
            weightBytes += p.NumberOfElements * p.ElementSize;
        }
        long trainableCount = 0, gradientBytes = 0;
        var seenTrainable = new HashSet<IntPtr>();
        foreach (var (_, p) in trainable)
        {
            if (!seenTrainable.Add(p.Handle)) continue;
            trainableCount += p.NumberOfElements;
            gradientBytes += p.NumberOfElements * p.ElementSize;
            if (!seen.Contains(p.Handle)) { total += p.NumberOfElements; weightBytes += p.NumberOfElements * p.ElementSize; }
        }
        return new TrainingSummary
        {
            TotalParameters = total,
            TrainableParameters = trainableCount,
            TrainableShare = total == 0 ? 0 : (double)trainableCount / total,
            WeightBytes = weightBytes,
            GradientBytes = gradientBytes,
            OptimizerStateBytes = optimizer.StateBytes,
        };
    }

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"trainable parameters: {TrainableParameters:N0} of {TotalParameters:N0} ({TrainableShare * 100:0.####}%) | " +
        $"weights {Bytes(WeightBytes)} | gradients {Bytes(GradientBytes)} | optimizer state {(OptimizerStateBytes > 0 ? Bytes(OptimizerStateBytes) : "allocated at the first step")}");

    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.##} {units[u]}");
    }
}
