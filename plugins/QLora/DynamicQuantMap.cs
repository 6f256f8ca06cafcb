namespace Peft.Plugins.QLora;

/// <summary>
/// bitsandbytes' signed 8-bit "dynamic" map (<c>create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)</c>,
/// Dettmers 2015, "8-Bit Approximations for Parallelism in Deep Learning"), used by double quantization to store the
/// per-block absmax values in 8 bits. It is NOT IEEE FP8: a dynamic exponent e = 0..6 selects the decade 10^(e-6), and
/// the decade holds 2^e linearly spaced fractions (the midpoints of linspace(0.1, 1, 2^e + 1)), positive and negative:
/// <code>
///   for e in 0..6:  b = linspace(0.1, 1, 2^e + 1) (fp32);  m_k = (b_k + b_{k+1}) / 2;  entries ±10^(e-6) · m_k
///   plus 0 and 1.0  →  2 · (1 + 2 + … + 64) + 2 = 256 entries, sorted ascending (min ≈ -0.99297, max 1.0)
/// </code>
/// Everything is computed in fp32 as PyTorch does; <see cref="Linspace"/> uses torch's scalar formula (start + step·i
/// below the halfway index, end − step·(n−1−i) above). PyTorch's SIMD path of the same kernel can differ from it by
/// one ulp in some boundaries, so maps built on different machines may differ in the last bit of a few entries;
/// a checkpoint carries its map (<c>nested_quant_map</c>), and loading one uses the stored map.
/// </summary>
public static class DynamicQuantMap
{
    /// <summary>The 256-entry signed map, ascending.</summary>
    public static readonly float[] Signed = Create();

    /// <summary>fp32 midpoints of adjacent entries (255 values): quantizing picks the nearest entry, ties to the lower.</summary>
    public static readonly float[] SignedMidpoints = Midpoints(Signed);

    static float[] Create()
    {
        const int maxExponentBits = 7, totalBits = 8, nonSignBits = totalBits - 1;
        var data = new List<float>(256);
        for (int i = 0; i < maxExponentBits; i++)
        {
            int fractionItems = (1 << (i + nonSignBits - maxExponentBits)) + 1;
            var boundaries = Linspace(0.1f, 1f, fractionItems);
            float scale = (float)Math.Pow(10, -(maxExponentBits - 1) + i);   // python float 10 ** k, used as fp32
            var means = new float[fractionItems - 1];
            for (int k = 0; k < means.Length; k++) means[k] = (boundaries[k] + boundaries[k + 1]) / 2f;
            foreach (var m in means) data.Add(scale * m);
            foreach (var m in means) data.Add(-scale * m);
        }
        // additional_items = 2^(non_sign_bits - max_exponent_bits) - 1 = 0 for the signed 8-bit map.
        data.Add(0f);
        data.Add(1f);
        if (data.Count != 256) throw new InvalidOperationException($"dynamic map has {data.Count} entries, expected 256");
        data.Sort();
        return data.ToArray();
    }

    /// <summary>torch.linspace(start, end, steps, dtype=float32) on CPU, scalar formula.</summary>
    public static float[] Linspace(float start, float end, int steps)
    {
        var result = new float[steps];
        if (steps == 1) { result[0] = start; return result; }
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++)
            result[i] = i < halfway ? start + step * i : end - step * (steps - i - 1);
        return result;
    }

    static float[] Midpoints(float[] sorted)
    {
        var t = new float[sorted.Length - 1];
        for (int i = 0; i < t.Length; i++) t[i] = (sorted[i] + sorted[i + 1]) / 2f;
        return t;
    }

    /// <summary>Index of the entry nearest to x (x is clamped to [-1, 1] first); a midpoint goes to the lower entry.</summary>
    public static byte Quantize(float x)
    {
        var t = SignedMidpoints;
        int lo = 0, hi = t.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (x > t[mid]) lo = mid + 1; else hi = mid;
        }
        return (byte)lo;
    }
}
