using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Serialization;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using Peft.Host.Model;
using TorchSharp;
using TorchSharp.Modules;

namespace Peft.Host.Training;

/// <summary>
/// What a training run actually holds, counted from its tensors at the end of the run (training_summary.json's
/// <c>held_memory</c>), the same components <c>peft plan --config</c> predicts:
/// <list type="bullet">
/// <item>weights: frozen parameters and trainable parameters, each tensor once (tied weights once), its own dtype;</item>
/// <item>quantization state: what every quantized layer holds for its weight (packed codes and their statistics:
///   absmax, nested absmax and offset, row scales), as the layer reports it (<see cref="IQuantizedWeightBytes.QuantizedBytes"/>,
///   the count the bench and the planner use too); shared code tables are not counted per layer;</item>
/// <item>gradients: the largest total of gradient tensors held at once, read after each backward pass, before the
///   optimizer step (a layer-wise optimizer reports its own peak: it frees each gradient inside backward);</item>
/// <item>optimizer state: what the optimizer holds (moments, step counters, GaLore's projectors);</item>
/// <item>activations: C-heap bytes a forward pass leaves alive for backward (glibc mallinfo2 before the forward and
///   after the loss; LibTorch's CPU tensors come from malloc), the largest micro-batch of the last step (the first
///   step's reading also holds one-time allocations of the libraries);</item>
/// <item>peak process memory: the resident set's high-water mark (VmHWM in /proc/self/status).</item>
/// </list>
/// </summary>
public sealed record HeldMemory
{
    [JsonPropertyName("frozen_weight_bytes")] public long FrozenWeightBytes { get; init; }
    [JsonPropertyName("trainable_weight_bytes")] public long TrainableWeightBytes { get; init; }
    [JsonPropertyName("quantization_state_bytes")] public long QuantizationStateBytes { get; init; }
    [JsonPropertyName("quantized_weights")] public long QuantizedWeights { get; init; }
    [JsonPropertyName("gradient_bytes")] public long GradientBytes { get; init; }
    [JsonPropertyName("optimizer_state_bytes")] public long OptimizerStateBytes { get; init; }

    /// <summary>Null where the C heap cannot be read (not glibc).</summary>
    [JsonPropertyName("activation_bytes")] public long? ActivationBytes { get; init; }

    /// <summary>Null where /proc/self/status is absent (not Linux).</summary>
    [JsonPropertyName("peak_process_bytes")] public long? PeakProcessBytes { get; init; }

    /// <summary>Sum of the tensor components (weights, quantization state, gradients, optimizer state, activations).</summary>
    [JsonPropertyName("tensor_bytes")] public long TensorBytes =>
        FrozenWeightBytes + TrainableWeightBytes + QuantizationStateBytes + GradientBytes + OptimizerStateBytes + (ActivationBytes ?? 0);

    public static HeldMemory Measure(ICausalLanguageModel model, IReadOnlyList<(string Name, Parameter Parameter)> trainable, IPeftOptimizer optimizer,
        long peakGradientBytes, long? activationBytes)
    {
        var trainableHandles = new HashSet<IntPtr>();
        long trainableBytes = 0;
        foreach (var (_, p) in trainable)
            if (trainableHandles.Add(p.Handle)) trainableBytes += p.NumberOfElements * p.ElementSize;
        long frozen = 0;
        var seen = new HashSet<IntPtr>();
        foreach (var (_, p) in model.NamedParameters())
            if (seen.Add(p.Handle) && !trainableHandles.Contains(p.Handle)) frozen += p.NumberOfElements * p.ElementSize;
        var (quantBytes, quantWeights) = QuantizedWeightBytes.Sum(model);   // adapters looked through; the count the bench and planner use
        if (optimizer is IBackwardStepOptimizer layerwise) peakGradientBytes = Math.Max(peakGradientBytes, layerwise.PeakGradientBytes);
        return new HeldMemory
        {
            FrozenWeightBytes = frozen,
            TrainableWeightBytes = trainableBytes,
            QuantizationStateBytes = quantBytes,
            QuantizedWeights = quantWeights,
            GradientBytes = peakGradientBytes,
            OptimizerStateBytes = optimizer.StateBytes,
            ActivationBytes = activationBytes,
            PeakProcessBytes = ProcessMemory.PeakResidentBytes(),
        };
    }

    /// <summary>Bytes of the gradients the trainable parameters hold now (each tensor once).</summary>
    public static long HeldGradientBytes(IReadOnlyList<(string Name, Parameter Parameter)> trainable)
    {
        long bytes = 0;
        var seen = new HashSet<IntPtr>();
        foreach (var (_, p) in trainable)
        {
            if (!seen.Add(p.Handle)) continue;
            using var g = p.grad;
            if (g is not null) bytes += g.NumberOfElements * g.ElementSize;
        }
        return bytes;
    }

    public string Describe()
    {
        string B(long b) => TrainingSummary.Bytes(b);
        var parts = new List<string>
        {
            $"weights {B(FrozenWeightBytes)} frozen + {B(TrainableWeightBytes)} trainable",
        };
        if (QuantizationStateBytes > 0) parts.Add($"quantized state {B(QuantizationStateBytes)}");
        parts.Add($"gradients {B(GradientBytes)}");
        parts.Add($"optimizer state {B(OptimizerStateBytes)}");
        if (ActivationBytes is { } a) parts.Add($"activations {B(a)}");
        if (PeakProcessBytes is { } peak) parts.Add($"peak process memory {B(peak)} (VmHWM)");
        return "memory held: " + string.Join(" | ", parts);
    }
}

/// <summary>Process-level memory readings: the C heap in use (glibc) and the resident set's high-water mark (Linux).</summary>
public static class ProcessMemory
{
    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    static extern MallInfo2 mallinfo2();

    static bool? _heapReadable;

    /// <summary>Bytes the C heap has handed out and not taken back (mallinfo2: uordblks + hblkhd), or null when unreadable.</summary>
    public static long? HeapInUse()
    {
        if (_heapReadable == false || !OperatingSystem.IsLinux()) return null;
        try
        {
            var m = mallinfo2();
            _heapReadable = true;
            return (long)m.Uordblks + (long)m.Hblkhd;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            _heapReadable = false;
            return null;
        }
    }

    /// <summary>VmHWM of /proc/self/status in bytes, or null.</summary>
    public static long? PeakResidentBytes()
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return null;
        foreach (var line in File.ReadLines(status))
        {
            if (!line.StartsWith("VmHWM:", StringComparison.Ordinal)) continue;
            var parts = line[6..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return parts.Length == 2 && parts[1] == "kB" && long.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var kb) ? kb * 1024 : null;
        }
        return null;
    }
}
