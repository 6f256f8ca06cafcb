using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Data;

/// <summary>
/// A micro-batch, right-padded to its longest example: input ids padded with the pad id, labels with -100
/// (so padding never counts in the loss; with causal attention, right padding does not change the real
/// positions' outputs). Row-major (batch, seq) arrays; <see cref="ToTensors"/> makes int64 tensors.
/// </summary>
public sealed record CollatedBatch(long[] InputIds, long[] Labels, int BatchSize, int SequenceLength, int CountedTokens, int RealTokens)
{
    /// <summary>(batch, seq) int64 input ids and labels on <paramref name="device"/>; the caller disposes them.</summary>
    public (Tensor InputIds, Tensor Labels) ToTensors(Device device)
    {
        var shape = new long[] { BatchSize, SequenceLength };
        var inputs = torch.tensor(InputIds, shape, dtype: ScalarType.Int64, device: device);
        var labels = torch.tensor(Labels, shape, dtype: ScalarType.Int64, device: device);
        return (inputs, labels);
    }
}

public static class BatchCollator
{
    public static CollatedBatch Collate(IReadOnlyList<TokenizedExample> examples, int padId)
    {
        if (examples.Count == 0) throw new ArgumentException("a batch needs at least one example", nameof(examples));
        int length = examples.Max(e => e.Length);
        var ids = new long[examples.Count * length];
        var labels = new long[examples.Count * length];
        int counted = 0, real = 0;
        for (int b = 0; b < examples.Count; b++)
        {
            var e = examples[b];
            int row = b * length;
            for (int t = 0; t < length; t++)
            {
                bool inside = t < e.Length;
                ids[row + t] = inside ? e.InputIds[t] : padId;
                labels[row + t] = inside ? e.Labels[t] : TokenizedExample.IgnoreIndex;
            }
            counted += e.CountedTokens;
            real += e.Length;
        }
        return new CollatedBatch(ids, labels, examples.Count, length, counted, real);
    }
}
