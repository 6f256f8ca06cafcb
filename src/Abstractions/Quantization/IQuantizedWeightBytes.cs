using Peft.Abstractions.Model;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// A layer whose weight is held as quantized storage (packed codes plus their statistics: absmax, nested absmax,
/// row scales), kept in module buffers rather than parameters, so a count of parameters does not see it. Every
/// memory report adds <see cref="QuantizedBytes"/> through <see cref="QuantizedWeightBytes.Sum"/> and nothing else:
/// the training summary's <c>quantization_state_bytes</c> (HeldMemory) and the bench's stored weight bytes; the
/// planner's <see cref="IQuantizer.QuantizedBytes"/> predicts the same figure to the byte. Implemented by every
/// quantized linear (<see cref="IQuantizedLinear"/>, <see cref="ITrainableQuantizedWeight"/>).
/// </summary>
public interface IQuantizedWeightBytes
{
    /// <summary>
    /// THE count of a quantized weight's bytes: everything the layer holds for it, read from what it holds — packed
    /// codes, every statistic (absmax, nested absmax, row scales), scalar statistics (NF4's nested offset) and any
    /// code table the layer holds for itself (one loaded from a checkpoint that differs from the shared constant).
    /// Process-wide constant tables shared by every layer (the NF4/FP4 code book, bitsandbytes' dynamic map) are not
    /// held per layer and not counted. The bias is excluded (it is a parameter).
    /// </summary>
    long QuantizedBytes { get; }

    /// <summary>Number of weights it stores (out · in); <c>QuantizedBytes / QuantizedWeightCount</c> is bytes per weight.</summary>
    long QuantizedWeightCount { get; }
}

/// <summary>Sums the quantized storage of a model's linear slots, looking through adapter wrappers to their base layer.</summary>
public static class QuantizedWeightBytes
{
    /// <summary>(bytes held, weights stored) over every slot whose (unwrapped) layer is quantized; (0, 0) when none is.</summary>
    public static (long Bytes, long Weights) Sum(IPeftModel model)
    {
        long bytes = 0, weights = 0;
        foreach (var slot in model.LinearSlots)
        {
            ILinearLayer layer = model.GetLinear(slot.Name);
            while (layer is IAdapterLayer adapter) layer = adapter.BaseLayer;
            if (layer is IQuantizedWeightBytes q)
            {
                bytes += q.QuantizedBytes;
                weights += q.QuantizedWeightCount;
            }
        }
        return (bytes, weights);
    }
}
