using static TorchSharp.torch;

namespace Peft.Abstractions.Distributed;

/// <summary>
/// The collectives data-parallel training needs, over the ranks of one job. The host's implementation is MPI
/// (MPICH through MPI.NET, one rank per process); a GPU cluster would drop in NCCL behind the same contract
/// (one rank per GPU, tensors on that GPU). Every member is collective: all ranks call it, in the same order,
/// with tensors of the same shape and dtype. Tensors are dense, contiguous and updated in place; an
/// implementation hands their memory to the transport directly (no managed copy).
/// </summary>
public interface IGradientCommunicator : IDisposable
{
    /// <summary>This process's rank, 0 ≤ Rank &lt; WorldSize. Rank 0 writes the run's files.</summary>
    int Rank { get; }

    /// <summary>Number of ranks; 1 for a plain single process.</summary>
    int WorldSize { get; }

    /// <summary>Short name for logs ("mpi", "single").</summary>
    string Transport { get; }

    /// <summary>tensor ← Σ_ranks tensor, element-wise, in place (float32, float64 or int64).</summary>
    void AllReduceSum(Tensor tensor);

    /// <summary>tensor ← root's tensor, in place on every other rank (any dtype).</summary>
    void Broadcast(Tensor tensor, int root);

    /// <summary>
    /// Reduce-scatter: <paramref name="input"/> (the same length on every rank) is N consecutive segments of
    /// <paramref name="counts"/>[0..N−1] elements; <paramref name="output"/> (counts[Rank] elements) ← Σ_ranks of
    /// segment Rank. Half an all-reduce's traffic: ZeRO-1 sends each gradient only to the rank that updates it.
    /// The default is an all-reduce and a copy (correct, not cheaper); NCCL has <c>ncclReduceScatter</c>.
    /// </summary>
    void ReduceScatterSum(Tensor input, Tensor output, long[] counts)
    {
        AllReduceSum(input);
        output.copy_(input.narrow(0, counts.Take(Rank).Sum(), counts[Rank]));
    }

    /// <summary>
    /// All-gather: <paramref name="output"/> (Σ counts elements) ← the concatenation of every rank's
    /// <paramref name="input"/> (counts[r] elements on rank r), any dtype. The default broadcasts each segment.
    /// </summary>
    void AllGather(Tensor input, Tensor output, long[] counts)
    {
        long offset = 0;
        for (int r = 0; r < WorldSize; r++)
        {
            using var segment = output.narrow(0, offset, counts[r]);
            if (r == Rank) segment.copy_(input);
            Broadcast(segment, r);
            offset += counts[r];
        }
    }

    /// <summary>Wall-clock seconds spent inside collectives so far (the communication share of a step).</summary>
    double CommunicationSeconds { get; }
}
