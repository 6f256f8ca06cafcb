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
/// its owned parameters only — holds their state and updates them. One step, after the gradients were summed
/// over the ranks:
/// <code>
///   inner.Step(lr)                      rank r updates the parameters it owns (state: 1/N of the total)
///   for each owner r: broadcast(r)      the updated parameters of r, in flat buckets → every rank has all weights
/// </code>
/// Gradients and weights stay whole on every rank (stage 1 shards only the optimizer state). Checkpoints hold
/// the whole state (<see cref="GatherState"/>), so a run resumes on any number of ranks; <see cref="LoadState"/>
/// keeps the owned parameters' entries (every key is <c>{parameter name}.{suffix}</c>).
/// </summary>
public sealed class ZeroShardedOptimizer : IPeftOptimizer
{
    readonly IGradientCommunicator _comm;
    readonly IReadOnlyList<(string Name, Parameter Parameter)> _all;
    readonly int[] _owner;
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

    public void Step(double learningRate)
    {
        _inner.Step(learningRate);
        // every owner's updated parameters to every rank, in flat buckets
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        for (int r = 0; r < _comm.WorldSize; r++)
        {
            var owned = _all.Where((p, i) => _owner[i] == r && p.Parameter.requires_grad).Select(p => p.Parameter).ToList();
            foreach (var bucket in DataParallelism.Buckets(owned, _bucketBytes))
            {
                var flat = torch.cat(bucket.Select(p => p.detach().reshape(-1)).ToList());
                _comm.Broadcast(flat, r);
                if (r == _comm.Rank) continue;
                long offset = 0;
                foreach (var p in bucket)
                {
                    p.copy_(flat.narrow(0, offset, p.NumberOfElements).view_as(p));
                    offset += p.NumberOfElements;
                }
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
