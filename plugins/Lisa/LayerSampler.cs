using System.Globalization;
using System.Text.Json.Nodes;

namespace Peft.Plugins.Lisa;

/// <summary>
/// LISA's own deterministic generator: xoshiro256** (Blackman &amp; Vigna 2018), seeded through SplitMix64, with its
/// 256-bit state serialisable to JSON so a resumed run draws exactly what the uninterrupted one drew. It is
/// independent of torch's generator, so dropout or data order never shift which layers are sampled.
/// </summary>
public sealed class LayerSampler
{
    ulong _s0, _s1, _s2, _s3;

    public LayerSampler(ulong seed)
    {
        // SplitMix64 expands the seed into four non-zero-correlated words (the authors' recommended seeding).
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    LayerSampler() { }

    static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static ulong Rotl(ulong x, int k) => (x << k) | (x >> (64 - k));

    /// <summary>The next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        ulong result = Rotl(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3;
        _s2 ^= t;
        _s3 = Rotl(_s3, 45);
        return result;
    }

    /// <summary>Uniform integer in [0, n), unbiased (draws above the largest multiple of n are rejected).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "must be positive");
        ulong bound = (ulong)n;
        ulong limit = ulong.MaxValue - (ulong.MaxValue % bound + 1) % bound;   // accept x <= limit: (limit + 1) is a multiple of n
        ulong x;
        do x = NextUInt64(); while (x > limit);
        return (int)(x % bound);
    }

    /// <summary>
    /// k distinct indices of [0, n), every k-subset equally likely (partial Fisher–Yates: position i swaps with a
    /// uniform position of [i, n)), returned in increasing order.
    /// </summary>
    public int[] SampleWithoutReplacement(int n, int k)
    {
        if (k < 0 || k > n) throw new ArgumentOutOfRangeException(nameof(k), k, $"must be in [0, {n}]");
        var pool = Enumerable.Range(0, n).ToArray();
        for (int i = 0; i < k; i++)
        {
            int j = i + NextInt(n - i);
            (pool[i], pool[j]) = (pool[j], pool[i]);
        }
        var chosen = pool[..k];
        Array.Sort(chosen);
        return chosen;
    }

    /// <summary>The four state words as hexadecimal strings (JSON numbers cannot carry 64 bits exactly).</summary>
    public JsonArray ToJson() => new(new[] { _s0, _s1, _s2, _s3 }.Select(w => (JsonNode?)JsonValue.Create(w.ToString("x16", CultureInfo.InvariantCulture))).ToArray());

    public static LayerSampler FromJson(JsonNode? node)
    {
        if (node is not JsonArray { Count: 4 } words) throw new FormatException("the generator state must be an array of 4 hexadecimal words");
        var s = new ulong[4];
        for (int i = 0; i < 4; i++)
            if (words[i] is not JsonValue v || !v.TryGetValue<string>(out var text) || !ulong.TryParse(text, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out s[i]))
                throw new FormatException($"generator word {i} ('{words[i]}') is not a hexadecimal 64-bit number");
        if (s.All(w => w == 0)) throw new FormatException("the generator state is all zeros (xoshiro256** would only produce zeros)");
        return new LayerSampler { _s0 = s[0], _s1 = s[1], _s2 = s[2], _s3 = s[3] };
    }
}
