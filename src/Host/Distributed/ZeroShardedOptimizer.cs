using System.Text;
using System.Text.Json;
using Peft.Abstractions.Distributed;
using Peft.Abstractions.Optimization;
using Peft.Host.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Distributed;

/// <summary>
/// ZeRO stage 1 (Rajbhandari et al., arXiv 1910.02054, "P_os"): the optimizer state is partitioned over the N
/// ranks. Every trainable parameter has one owner rank (greedy by size, so each rank owns about 1/N of the
/// trainable elements); this rank's inner optimizer — built by the run's own strategy (AdamW, GaLore...) over
/// its owned parameters only — holds their state and updates them. One step:
/// <code>
///   ReduceGradients()                   g_p ← Σ_ranks g_p on p's owner only (reduce-scatter: half an all-reduce's traffic)
///   ClipByGlobalNorm(c)                 ‖g‖ = ‖(‖g_p‖)_p‖, the per-parameter norms all-reduced (one tiny vector); owned g_p ·= min(1, c/‖g‖)
///   inner.Step(lr)                      rank r updates the parameters it owns (state and arithmetic: 1/N of the total)
///   all-gather                          every owner's updated parameters → every rank has all weights
/// </code>
/// Both collectives work on flat buckets of at most <c>distributed:bucket_mb</c> holding the parameters in owner
/// order (rank 0's segment, then rank 1's, …), so a step makes a few large calls rather than one per tensor. When the trainer must see every summed gradient (fp16 loss scaling checks them
/// all for overflow) it all-reduces instead (<see cref="DataParallelism.SumGradients"/>) and the step is the same.
/// Gradients and weights stay whole on every rank (stage 1 shards only the optimizer state). Checkpoints hold
/// the whole state (<see cref="GatherState"/>), so a run resumes on any number of ranks; <see cref="LoadState"/>
/// keeps the owned parameters' entries (every key is <c>{parameter name}.{suffix}</c>).
/// </summary>
public sealed class ZeroShardedOptimizer : IPeftOptimizer
{
    readonly IGradientCommunicator _comm;
    readonly IReadOnlyList<(string Name, Parameter Parameter)> _all;
    readonly int[] _owner;
    readonly Dictionary<Parameter, int> _ownerOf = new(ReferenceEqualityComparer.Instance);
    readonly HashSet<string> _owned;
    readonly IPeftOptimizer _inner;
    readonly long _bucketBytes;
    readonly List<Tensor> _gathered = [];

    /// <param name="createInner">Builds the strategy's optimizer over a subset of the parameters (this rank's shard).</param>
    public ZeroShardedOptimizer(IReadOnlyList<(string Name, Parameter Parameter)> parameters, IGradientCommunicator communicator,
                                Func<IReadOnlyList<(string Name, Parameter Parameter)>, IPeftOptimizer> createInner, long bucketBytes = 25L << 20)
    {
        _comm = communicator;
        _all = parameters.ToList();
        _bucketBytes = bucketBytes;
        _owner = AssignOwners(_all.Select(p => p.Parameter.NumberOfElements).ToList(), communicator.WorldSize);
        for (int i = 0; i < _all.Count; i++) _ownerOf[_all[i].Parameter] = _owner[i];
        var mine = _all.Where((_, i) => _owner[i] == communicator.Rank).ToList();
        _owned = mine.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
        _inner = createInner(mine);
    }

    /// <summary>Owner rank of each parameter: largest first, each to the rank with the fewest elements so far (ties: lowest rank).</summary>
    public static int[] AssignOwners(IReadOnlyList<long> sizes, int ranks)
    {
        var owner = new int[sizes.Count];
        var load = new long[ranks];
        foreach (int i in Enumerable.Range(0, sizes.Count).OrderByDescending(i => sizes[i]).ThenBy(i => i))
        {
            int r = 0;
            for (int k = 1; k < ranks; k++) if (load[k] < load[r]) r = k;
            owner[i] = r;
            load[r] += sizes[i];
        }
        return owner;
    }

    /// <summary>Names of the parameters whose state this rank holds.</summary>
    public IReadOnlySet<string> OwnedParameters => _owned;

    /// <summary>
    /// Collective, in place of the all-reduce: each trainable gradient summed over the ranks onto its owner only.
    /// The gradients are packed in owner order into flat buckets (each bucket: rank 0's segment, rank 1's, …) and
    /// each bucket is one reduce-scatter (<see cref="IGradientCommunicator.ReduceScatterSum"/>); this rank copies
    /// its summed segment back into its own gradients. The other gradients keep this rank's partial sums, which
    /// <see cref="ClipByGlobalNorm"/> and <see cref="Step"/> never read.
    /// </summary>
    public void ReduceGradients()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var p in LiveParameters())
            if (p.grad is null) p.grad = torch.zeros_like(p);   // a rank without examples adds zeros
        foreach (var bucket in OwnerBuckets())
        {
            var grads = bucket.Select(p => p.grad!).ToList();
            var dtype = grads[0].dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
            var flat = torch.cat(grads.Select(g => g.reshape(-1).to_type(dtype)).ToList());
            var counts = Counts(bucket);
            var mine = torch.empty(counts[_comm.Rank], dtype);
            _comm.ReduceScatterSum(flat, mine, counts);
            DataParallelism.Unpack(mine, bucket.Where(p => _ownerOf[p] == _comm.Rank).Select(p => p.grad!).ToList());
        }
    }

    /// <summary>The parameters communicated this step, in the trainable list's order: those that require grad (a hook may freeze some).</summary>
    List<Parameter> LiveParameters() => _all.Select(e => e.Parameter).Where(p => p.requires_grad).ToList();

    /// <summary>The live parameters sorted by owner (stable), in flat buckets of at most bucket_mb: each bucket holds consecutive owners' segments.</summary>
    IEnumerable<List<Parameter>> OwnerBuckets() =>
        DataParallelism.Buckets(LiveParameters().OrderBy(p => _ownerOf[p]).ToList(), _bucketBytes);

    /// <summary>Elements of each rank's segment in a bucket.</summary>
    long[] Counts(IReadOnlyList<Parameter> bucket)
    {
        var counts = new long[_comm.WorldSize];
        foreach (var p in bucket) counts[_ownerOf[p]] += p.NumberOfElements;
        return counts;
    }

    /// <summary>
    /// Collective, after <see cref="ReduceGradients"/>: <c>torch.nn.utils.clip_grad_norm_</c> over the sharded
    /// gradients, bit for bit what the unsharded trainer computes. Each rank writes ‖g_p‖₂ of the gradients it owns
    /// into a vector over the live parameters (zeros elsewhere); one small all-reduce gives every rank the whole
    /// vector, the stack torch builds; then ‖g‖ = ‖vector‖₂ and each rank scales its owned gradients by
    /// min(1, max_norm / (‖g‖ + 1e-6)) in the gradients' dtype. Returns ‖g‖ (the same on every rank).
    /// </summary>
    public double ClipByGlobalNorm(double maxNorm)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var live = LiveParameters();
        if (live.Count == 0) return 0.0;
        var owned = new List<Tensor>();
        var norms = torch.zeros(live.Count, ScalarType.Float32);
        for (int i = 0; i < live.Count; i++)
        {
            if (_ownerOf[live[i]] != _comm.Rank) continue;
            var g = live[i].grad!;
            owned.Add(g);
            norms[i] = torch.linalg.vector_norm(g, 2).to_type(ScalarType.Float32);
        }
        _comm.AllReduceSum(norms);   // each entry has one non-zero addend: exact
        var totalNorm = torch.linalg.vector_norm(norms, 2);
        double total = totalNorm.to_type(ScalarType.Float64).item<double>();
        if (maxNorm > 0)
        {
            var coefficient = (maxNorm / (totalNorm + 1e-6)).clamp_max(1.0);
            foreach (var g in owned) g.mul_(coefficient.to(g.dtype));
        }
        return total;
    }

    public void Step(double learningRate)
    {
        _inner.Step(learningRate);
        // every owner's updated parameters to every rank: one all-gather per owner-ordered bucket
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var bucket in OwnerBuckets())
        {
            var dtype = bucket[0].dtype;
            var mine = bucket.Where(p => _ownerOf[p] == _comm.Rank).ToList();
            var input = mine.Count > 0 ? torch.cat(mine.Select(p => p.detach().reshape(-1).to_type(dtype)).ToList()) : torch.empty(0, dtype);
            var gathered = torch.empty(bucket.Sum(p => p.NumberOfElements), dtype);
            _comm.AllGather(input, gathered, Counts(bucket));
            long offset = 0;
            foreach (var p in bucket)
            {
                if (_ownerOf[p] != _comm.Rank) p.copy_(gathered.narrow(0, offset, p.NumberOfElements).view_as(p));
                offset += p.NumberOfElements;
            }
        }
    }

    public void ZeroGrad()
    {
        _inner.ZeroGrad();
        foreach (var (_, p) in _all)
        {
            using var grad = p.grad;
            if (grad is not null) p.grad = null;
        }
    }

    public void ReleaseState(IEnumerable<string> parameterNames) => _inner.ReleaseState(parameterNames.Where(_owned.Contains).ToList());

    /// <summary>Bytes of optimizer state held by THIS rank (its shard).</summary>
    public long StateBytes => _inner.StateBytes;

    /// <summary>This rank's shard of the state (aliases).</summary>
    public IReadOnlyDictionary<string, Tensor> GetState() => _inner.GetState();

    /// <summary>
    /// Collective: every rank's shard to <paramref name="root"/>, which gets the whole state (its own tensors are
    /// aliases, the others' are copies kept until the next call); null on the other ranks. Per rank r in turn:
    /// a JSON header (keys, dtypes, shapes) and then each tensor, broadcast from r.
    /// </summary>
    public IReadOnlyDictionary<string, Tensor>? GatherState(int root)
    {
        foreach (var t in _gathered) t.Dispose();
        _gathered.Clear();
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        for (int r = 0; r < _comm.WorldSize; r++)
        {
            var local = r == _comm.Rank ? _inner.GetState() : null;
            var header = BroadcastHeader(local, r);
            foreach (var (key, dtype, shape) in header)
            {
                Tensor t = local is not null ? local[key].contiguous() : torch.empty(shape, Safetensors.ToScalarType(dtype));
                _comm.Broadcast(t, r);
                if (local is not null)
                {
                    if (_comm.Rank == root) result[key] = local[key];
                    if (!ReferenceEquals(t, local[key])) t.Dispose();
                }
                else if (_comm.Rank == root) { _gathered.Add(t); result[key] = t; }
                else t.Dispose();
            }
        }
        return _comm.Rank == root ? result : null;
    }

    List<(string Key, string Dtype, long[] Shape)> BroadcastHeader(IReadOnlyDictionary<string, Tensor>? local, int root)
    {
        byte[] bytes = local is null ? [] : JsonSerializer.SerializeToUtf8Bytes(
            local.Select(e => new HeaderEntry(e.Key, Safetensors.FromScalarType(e.Value.dtype), e.Value.shape)).ToList());
        using var length = torch.tensor((long)bytes.Length);
        _comm.Broadcast(length, root);
        using var buffer = local is null ? torch.zeros(length.item<long>(), dtype: ScalarType.Byte) : torch.tensor(bytes, dtype: ScalarType.Byte);
        _comm.Broadcast(buffer, root);
        var entries = JsonSerializer.Deserialize<List<HeaderEntry>>(Encoding.UTF8.GetString(buffer.bytes.ToArray())) ?? [];
        return entries.Select(e => (e.Key, e.Dtype, e.Shape)).ToList();
    }

    sealed record HeaderEntry(string Key, string Dtype, long[] Shape);

    /// <summary>Load the entries of the whole state (a checkpoint) that belong to this rank's parameters.</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        var byLength = _all.Select(p => p.Name).OrderByDescending(n => n.Length).ToList();
        var mine = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (key, value) in state)
        {
            var name = byLength.FirstOrDefault(n => key.Length > n.Length && key.StartsWith(n, StringComparison.Ordinal) && key[n.Length] == '.')
                       ?? throw new ArgumentException($"optimizer state key '{key}' names no parameter of this optimizer");
            if (_owned.Contains(name)) mine[key] = value;
        }
        _inner.LoadState(mine);
    }

    public void Dispose()
    {
        foreach (var t in _gathered) t.Dispose();
        _gathered.Clear();
        _inner.Dispose();
    }
}
