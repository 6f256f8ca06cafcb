using Peft.Abstractions.Model;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// A layer whose weight is held as quantized storage (packed codes plus their statistics: absmax, nested absmax,
/// row scales), kept in module buffers rather than parameters, so a count of parameters does not see it. Memory
/// reports (training summary, planner checks, the bench) add <see cref="QuantizedBytes"/> through
/// <see cref="QuantizedWeightBytes.Sum"/>. Implemented by every quantized linear (NF4/FP4 and INT8).
/// </summary>
public interface IQuantizedWeightBytes
{
    /// <summary>Bytes held for the weight, read from the tensors held: codes + every statistic; the bias excluded.</summary>
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
