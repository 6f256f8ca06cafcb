namespace Peft.Host.Data;

/// <summary>
/// Deterministic, platform-independent orders of examples. Every random choice of the data pipeline comes
/// from SplitMix64 (Steele et al., "Fast splittable pseudorandom number generators") seeded by a hash of
/// (run seed, purpose, epoch), so an order is a pure function of those numbers: a resumed run re-derives the
/// permutation of its epoch instead of having to store a generator's state.
/// </summary>
public static class DataOrder
{
    const ulong SplitStream = 0x5350_4C49_5400_0000UL;   // "SPLIT"
    const ulong EpochStream = 0x4550_4F43_4800_0000UL;   // "EPOCH"

    /// <summary>The order of the examples in <paramref name="epoch"/> (a permutation of 0..count−1).</summary>
    public static int[] EpochPermutation(int count, int seed, int epoch) => Permutation(count, Mix(seed, EpochStream, (ulong)epoch));

    /// <summary>The seeded permutation used to choose held-out examples.</summary>
    public static int[] SplitPermutation(int count, int seed) => Permutation(count, Mix(seed, SplitStream, 0));

    /// <summary>Fisher–Yates shuffle of 0..count−1 driven by SplitMix64 from <paramref name="state"/>.</summary>
    public static int[] Permutation(int count, ulong state)
    {
        var order = new int[count];
        for (int i = 0; i < count; i++) order[i] = i;
        for (int i = count - 1; i > 0; i--)
        {
            int j = (int)(NextUInt64(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    static ulong Mix(int seed, ulong stream, ulong value)
    {
        ulong state = (ulong)(uint)seed ^ stream;
        NextUInt64(ref state);
        state ^= value * 0xD1B5_4A32_D192_ED03UL;
        return NextUInt64(ref state);
    }

    /// <summary>SplitMix64: advance the state by the golden gamma and return its finalized mix.</summary>
    public static ulong NextUInt64(ref ulong state)
    {
        ulong z = state += 0x9E37_79B9_7F4A_7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>Where the data stream stands: the epoch and the index (into that epoch's order) of the next example.</summary>
public readonly record struct DataPosition(int Epoch, int Index);

/// <summary>
/// Hands out micro-batches of example indices, epoch after epoch, in a seeded order per epoch (or file order
/// without shuffle). A batch never spans two epochs: the last batch of an epoch may be shorter (no drop_last).
/// The whole state is <see cref="Position"/>, which checkpoints store.
/// </summary>
public sealed class EpochSampler
{
    readonly int _count, _batchSize, _seed;
    readonly bool _shuffle;
    int[]? _order;
    int _orderEpoch = -1;

    public EpochSampler(int count, int batchSize, int seed, bool shuffle, DataPosition start = default)
    {
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count), count, "there must be at least one example");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "must be positive");
        if (start.Epoch < 0 || start.Index < 0 || start.Index >= count)
            throw new ArgumentOutOfRangeException(nameof(start), start, $"position outside a data set of {count} examples");
        _count = count;
        _batchSize = batchSize;
        _seed = seed;
        _shuffle = shuffle;
        Position = start;
    }

    public DataPosition Position { get; private set; }

    /// <summary>Micro-batches in one epoch: ceil(count / batch_size).</summary>
    public int BatchesPerEpoch => (_count + _batchSize - 1) / _batchSize;

    public int[] NextBatch()
    {
        var (epoch, index) = Position;
        if (_orderEpoch != epoch)
        {
            _order = _shuffle ? DataOrder.EpochPermutation(_count, _seed, epoch) : Enumerable.Range(0, _count).ToArray();
            _orderEpoch = epoch;
        }
        int take = Math.Min(_batchSize, _count - index);
        var batch = _order.AsSpan(index, take).ToArray();
        index += take;
        Position = index >= _count ? new DataPosition(epoch + 1, 0) : new DataPosition(epoch, index);
        return batch;
    }
}
