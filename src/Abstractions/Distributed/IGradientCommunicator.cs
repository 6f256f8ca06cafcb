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

    /// <summary>Wall-clock seconds spent inside collectives so far (the communication share of a step).</summary>
    double CommunicationSeconds { get; }
}
