using System.Globalization;
using Peft.Abstractions;
using Peft.Abstractions.Distributed;
using Peft.Abstractions.Optimization;
using Peft.Host.Data;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Distributed;

/// <summary>
/// Data parallelism as the training loop sees it (its only seam to the ranks). With N ranks each optimizer step
/// of global batch B (<c>training:batch_size</c>, the same number on any rank count) goes:
/// <code>
///   global batch  i_0 … i_{B−1}  (the same indices on every rank: same seed, same sampler)
///   rank r takes  i_{r·B/N} … i_{(r+1)·B/N − 1}        B/N examples; B mod N ≠ 0 is refused
///   G = counted label tokens of the GLOBAL batch        every rank knows it without communication
///   rank r: backward of  L_r = Σ_{its tokens} CE / G     so that  Σ_r ∇L_r = ∇(global token-weighted mean)
///   all-reduce (sum) of every trainable gradient, bucketed  → every rank holds the global batch's gradient
///   clip + optimizer step on identical gradients → identical weights on every rank
/// </code>
/// The sum of the per-rank gradients of L_r is the average of the ranks' mean-loss gradients weighted by their
/// token share, i.e. exactly the gradient one process computes on the whole batch (float rounding aside).
/// A single process uses <see cref="Single"/>: no MPI, no copies, the loop is unchanged.
/// </summary>
public sealed class DataParallelism : IDisposable
{
    readonly long _bucketBytes, _directBytes;

    /// <param name="bucketBytes"><c>distributed:bucket_mb</c>: the largest flat bucket of small gradients.</param>
    /// <param name="directBytes"><c>distributed:direct_kb</c>: a gradient this large is all-reduced in place on its own memory.</param>
    public DataParallelism(IGradientCommunicator communicator, long bucketBytes = 25L << 20, long directBytes = 256L << 10)
    {
        Communicator = communicator;
        _bucketBytes = bucketBytes;
        _directBytes = directBytes;
    }

    /// <summary>One process, no communication.</summary>
    public static DataParallelism Single { get; } = new(new SingleProcessCommunicator());

    public IGradientCommunicator Communicator { get; }
    public int Rank => Communicator.Rank;
    public int WorldSize => Communicator.WorldSize;
    public bool Enabled => WorldSize > 1;

    /// <summary>Rank 0 writes checkpoints, metrics, results and the progress bar; the others only their own log.</summary>
    public bool IsWriter => Rank == 0;

    /// <summary>Seconds spent in gradient all-reduces (and ZeRO gathers) so far.</summary>
    public double CommunicationSeconds => Communicator.CommunicationSeconds;

    /// <summary>A global batch size that does not split evenly is refused, naming both numbers.</summary>
    public void CheckBatchSize(int batchSize)
    {
        if (Enabled && batchSize % WorldSize != 0)
            throw new PeftConfigurationException("training:batch_size", batchSize.ToString(CultureInfo.InvariantCulture),
                $"cannot be split evenly across {WorldSize} ranks ({batchSize} is not a multiple of {WorldSize}); training:batch_size is the global batch, each rank takes batch_size / ranks");
    }

    /// <summary>
    /// This rank's part of a global batch (null when it gets no example: the last, short batch of an epoch), and
    /// the global batch's counted and real token counts.
    /// </summary>
    public (CollatedBatch? Local, int CountedTokens, int RealTokens) Split(int[] globalBatch, IReadOnlyList<TokenizedExample> examples, int padId)
    {
        var global = BatchCollator.Collate(globalBatch.Select(i => examples[i]).ToList(), padId);
        if (!Enabled) return (global, global.CountedTokens, global.RealTokens);
        int n = globalBatch.Length, from = (int)((long)Rank * n / WorldSize), to = (int)((long)(Rank + 1) * n / WorldSize);
        var local = to > from ? BatchCollator.Collate(globalBatch[from..to].Select(i => examples[i]).ToList(), padId) : null;
        return (local, global.CountedTokens, global.RealTokens);
    }

    /// <summary>True on every rank when any rank was asked to stop (so all ranks leave the loop at the same step).</summary>
    public bool AnyRank(bool flag)
    {
        if (!Enabled) return flag;
        using var t = torch.tensor(flag ? 1L : 0L);
        Communicator.AllReduceSum(t);
        return t.item<long>() > 0;
    }

    /// <summary>Σ over ranks of a number (the step's loss sum).</summary>
    public double Sum(double value)
    {
        if (!Enabled) return value;
        using var t = torch.tensor(value, dtype: ScalarType.Float64);
        Communicator.AllReduceSum(t);
        return t.item<double>();
    }

    /// <summary>
    /// After the step's backward passes: sum every trainable gradient over the ranks. A float32/64 gradient of at
    /// least <c>distributed:direct_kb</c> (256 KiB) is all-reduced in place on its own memory: no copy into a bucket
    /// and back. The smaller ones go in flat buckets of at most <c>distributed:bucket_mb</c> (one native
    /// concatenation, one in-place all-reduce, one copy back each), so a network pays one message latency per
    /// bucket rather than per norm vector or LoRA factor.
    /// Which path a parameter takes depends only on the parameter, so every rank makes the same calls in the same
    /// order. A parameter that requires grad but got none on this rank (no example) adds zeros.
    /// </summary>
    public void SumGradients(IReadOnlyList<Parameter> trainable)
    {
        if (!Enabled) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var live = trainable.Where(p => p.requires_grad).ToList();
        var small = new List<Parameter>();
        foreach (var p in live)
        {
            var g = p.grad;
            if (g is null) p.grad = g = torch.zeros_like(p);
            bool direct = p.NumberOfElements * p.ElementSize >= _directBytes && p.dtype is ScalarType.Float32 or ScalarType.Float64 && g.dtype == p.dtype;
            if (!direct) { small.Add(p); continue; }
            if (!g.is_contiguous()) p.grad = g = g.contiguous();
            Communicator.AllReduceSum(g);
        }
        foreach (var bucket in Buckets(small, _bucketBytes))
        {
            var grads = bucket.Select(p => p.grad!).ToList();
            var dtype = grads[0].dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
            var flat = torch.cat(grads.Select(g => g.reshape(-1).to_type(dtype)).ToList());
            Communicator.AllReduceSum(flat);
            long offset = 0;
            foreach (var g in grads)
            {
                g.copy_(flat.narrow(0, offset, g.NumberOfElements).view_as(g));
                offset += g.NumberOfElements;
            }
        }
    }

    /// <summary>Consecutive parameters grouped into buckets of at most <paramref name="bucketBytes"/> (a larger tensor is a bucket of its own); same dtype within a bucket.</summary>
    public static IEnumerable<List<Parameter>> Buckets(IReadOnlyList<Parameter> parameters, long bucketBytes)
    {
        var bucket = new List<Parameter>();
        long bytes = 0;
        foreach (var p in parameters)
        {
            long size = p.NumberOfElements * 4;
            bool sameKind = bucket.Count == 0 || (bucket[0].dtype == ScalarType.Float64) == (p.dtype == ScalarType.Float64);
            if (bucket.Count > 0 && (bytes + size > bucketBytes || !sameKind))
            {
                yield return bucket;
                bucket = [];
                bytes = 0;
            }
            bucket.Add(p);
            bytes += size;
        }
        if (bucket.Count > 0) yield return bucket;
    }

    /// <summary>
    /// The optimizer state a checkpoint stores: the whole state on rank 0 (gathered from the shards under ZeRO-1,
    /// a collective), null on the other ranks.
    /// </summary>
    public IReadOnlyDictionary<string, Tensor>? OptimizerStateForCheckpoint(IPeftOptimizer optimizer)
    {
        if (optimizer is ZeroShardedOptimizer sharded) return sharded.GatherState(root: 0);
        return IsWriter ? optimizer.GetState() : null;
    }

    public void Dispose()
    {
        if (!ReferenceEquals(this, Single)) Communicator.Dispose();
    }
}

/// <summary>The world of one process: every collective is the identity.</summary>
public sealed class SingleProcessCommunicator : IGradientCommunicator
{
    public int Rank => 0;
    public int WorldSize => 1;
    public string Transport => "single";
    public double CommunicationSeconds => 0;
    public void AllReduceSum(Tensor tensor) { }
    public void Broadcast(Tensor tensor, int root) { }
    public void Dispose() { }
}
