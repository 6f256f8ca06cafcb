namespace Peft.Plugins.QLora;

/// <summary>The two 4-bit data types of bitsandbytes (Dettmers et al. 2023, "QLoRA").</summary>
public enum FourBitType
{
    /// <summary>NormalFloat4: 16 quantiles of N(0, 1) scaled to [-1, 1], index 7 exactly 0.</summary>
    Nf4,

    /// <summary>FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2), normalised by 12 to [-1, 1].</summary>
    Fp4,
}

/// <summary>
/// The 16-entry code tables of NF4 and FP4 and bitsandbytes' rounding to them (a value in [-1, 1], i.e. already
/// divided by its block's absmax, to a 4-bit index):
/// <code>
///   NF4: q = #{ i : x &gt; t_i },  t_i = (c_i + c_{i+1}) / 2 in fp32   (kernels.cu dQuantizeNF4; default backend's bucketize)
///   FP4: sign bit = x &lt; 0; |x| through kernels.cu dQuantizeFP4's decision tree (midpoints of |c| / 12)
/// </code>
/// A value exactly on a midpoint goes to the lower code (NF4), to the smaller magnitude (FP4, as the CUDA kernel).
/// </summary>
public static class FourBitCodebook
{
    /// <summary>bitsandbytes <c>get_4bit_type("nf4")</c> (create_normal_map(offset=0.9677083, use_extra_value=True)).</summary>
    public static readonly float[] Nf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    /// <summary>
    /// bitsandbytes <c>get_4bit_type("fp4")</c>: [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3]
    /// divided (in fp32) by its absmax 12. Index = sign bit (8) + 3 magnitude bits; not sorted.
    /// </summary>
    public static readonly float[] Fp4 = BuildFp4();

    /// <summary>NF4 rounding thresholds: fp32 midpoints of adjacent codes (15 values, ascending).</summary>
    public static readonly float[] Nf4Thresholds = BuildMidpoints(Nf4);

    public static float[] Codes(FourBitType type) => type == FourBitType.Nf4 ? Nf4 : Fp4;

    public static string Name(FourBitType type) => type == FourBitType.Nf4 ? "nf4" : "fp4";

    static float[] BuildFp4()
    {
        float[] raw = [0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, -0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f];
        return raw.Select(v => v / 12f).ToArray();
    }

    static float[] BuildMidpoints(float[] sorted)
    {
        var t = new float[sorted.Length - 1];
        for (int i = 0; i < t.Length; i++) t[i] = (sorted[i] + sorted[i + 1]) / 2f;
        return t;
    }

    /// <summary>NF4 index of a scaled value x in [-1, 1]: the number of thresholds x is strictly above.</summary>
    public static byte QuantizeNf4(float x)
    {
        // Binary search for the first threshold >= x (x on a threshold stays below it: lower code).
        var t = Nf4Thresholds;
        int lo = 0, hi = t.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (x > t[mid]) lo = mid + 1; else hi = mid;
        }
        return (byte)lo;
    }

    /// <summary>FP4 index of a scaled value x in [-1, 1], exactly kernels.cu's dQuantizeFP4 (pivots are |code| midpoints x 12).</summary>
    public static byte QuantizeFp4(float x)
    {
        int sign = x < 0 ? 0b1000 : 0;
        x = MathF.Abs(x);
        int q;
        if (x > 0.29166667f)        // (3 + 4) / 2 / 12
            q = x > 0.583333f       // (6 + 8) / 2 / 12
                ? (x > 0.8333333f ? 0b011 : 0b010)      // 12 | 8   (pivot (8 + 12) / 2 / 12)
                : (x > 0.4166667f ? 0b101 : 0b100);     // 6 | 4    (pivot 5 / 12)
        else if (x > 0.0859375f)    // (0.0625 + 2) / 2 / 12
            q = x > 0.20833333f ? 0b111 : 0b110;        // 3 | 2    (pivot 2.5 / 12)
        else
            q = x > 0.00260417f ? 0b001 : 0b000;        // 0.0625 | 0 (pivot 0.03125 / 12)
        return (byte)(q + sign);
    }

    public static byte Quantize(FourBitType type, float x) => type == FourBitType.Nf4 ? QuantizeNf4(x) : QuantizeFp4(x);
}
