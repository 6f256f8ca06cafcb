namespace Peft.Host.Generation;

/// <summary>
/// Picks the next token from logits exactly as llama2.c's <c>run.c</c> does, so a seed reproduces its samples:
/// temperature 0 -> argmax (the first maximum); otherwise logits / temperature, softmax, one uniform "coin"
/// from an xorshift64* generator seeded with <c>seed</c>, then nucleus (top-p) sampling: keep the most probable
/// tokens whose cumulative probability first exceeds top_p and draw among them in proportion to their
/// probabilities (top_p outside (0, 1): draw from the whole distribution). All arithmetic is float32, as in run.c.
/// </summary>
public sealed class TokenSampler
{
    readonly float _temperature, _topP;
    ulong _state;

    public TokenSampler(float temperature, float topP, ulong seed)
    {
        if (!(temperature >= 0) || !float.IsFinite(temperature)) throw new ArgumentOutOfRangeException(nameof(temperature), $"temperature {temperature} must be >= 0");
        if (!(topP >= 0) || topP > 1) throw new ArgumentOutOfRangeException(nameof(topP), $"top_p {topP} must be in [0, 1]");
        if (seed == 0) throw new ArgumentOutOfRangeException(nameof(seed), "seed must be non-zero (xorshift stays at 0 forever)");
        _temperature = temperature;
        _topP = topP;
        _state = seed;
    }

    /// <summary>run.c's random_u32: xorshift64* (Vigna), upper 32 bits.</summary>
    internal uint NextUInt32()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return (uint)((_state * 0x2545F4914F6CDD1DUL) >> 32);
    }

    /// <summary>A float32 in [0, 1) from the top 24 bits.</summary>
    internal float NextFloat() => (NextUInt32() >> 8) / 16777216.0f;

    /// <summary>The next token id given the logits (vocab) of the last position. <paramref name="logits"/> is overwritten.</summary>
    public int Sample(float[] logits)
    {
        if (_temperature == 0f) return ArgMax(logits);
        for (int i = 0; i < logits.Length; i++) logits[i] /= _temperature;
        Softmax(logits);
        float coin = NextFloat();
        return _topP <= 0f || _topP >= 1f ? SampleMultinomial(logits, coin) : SampleTopP(logits, _topP, coin);
    }

    static int ArgMax(float[] x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++)
            if (x[i] > x[best]) best = i;
        return best;
    }

    static void Softmax(float[] x)
    {
        float max = x[0];
        for (int i = 1; i < x.Length; i++) if (x[i] > max) max = x[i];
        float sum = 0f;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = MathF.Exp(x[i] - max);
            sum += x[i];
        }
        for (int i = 0; i < x.Length; i++) x[i] /= sum;
    }

    static int SampleMultinomial(float[] probabilities, float coin)
    {
        float cdf = 0f;
        for (int i = 0; i < probabilities.Length; i++)
        {
            cdf += probabilities[i];
            if (coin < cdf) return i;
        }
        return probabilities.Length - 1; // rounding
    }

    static int SampleTopP(float[] probabilities, float topP, float coin)
    {
        // Tokens below (1 - top_p) / (n - 1) can never be in the nucleus; dropping them first is run.c's speed-up.
        int n = probabilities.Length;
        float cutoff = (1.0f - topP) / (n - 1);
        var candidates = new List<(int Index, float Prob)>();
        for (int i = 0; i < n; i++)
            if (probabilities[i] >= cutoff) candidates.Add((i, probabilities[i]));
        // Descending probability; stable for ties, like glibc's merge-sort qsort.
        var sorted = candidates.OrderByDescending(c => c.Prob).ToList();

        float cumulative = 0f;
        int last = sorted.Count - 1;
        for (int i = 0; i < sorted.Count; i++)
        {
            cumulative += sorted[i].Prob;
            if (cumulative > topP)
            {
                last = i;
                break;
            }
        }
        float r = coin * cumulative;
        float cdf = 0f;
        for (int i = 0; i <= last; i++)
        {
            cdf += sorted[i].Prob;
            if (r < cdf) return sorted[i].Index;
        }
        return sorted[last].Index; // rounding
    }
}
