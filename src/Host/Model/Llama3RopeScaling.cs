using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Formats;

namespace Peft.Host.Model;

/// <summary>
/// <c>rope_scaling</c> of type <c>llama3</c> (Llama 3.1/3.2/3.3), as HF's <c>_compute_llama3_parameters</c>: with
/// wavelength λ_i = 2π / inv_freq_i, L = original_max_position_embeddings, λ_low = L / low_freq_factor and
/// λ_high = L / high_freq_factor,
/// <code>
///   λ_i &lt; λ_high            (high frequencies)   inv_freq_i                      unchanged
///   λ_i &gt; λ_low             (low frequencies)    inv_freq_i / factor
///   otherwise               (medium, smoothed)   (1 − s) inv_freq_i / factor + s inv_freq_i,
///                                                s = (L / λ_i − low_freq_factor) / (high_freq_factor − low_freq_factor)
/// </code>
/// The attention scaling of this type is 1. <c>rope_type</c>/<c>type</c> <c>default</c> means no scaling; any
/// other type (linear, dynamic, yarn, longrope...) is refused naming it.
/// </summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositionEmbeddings)
{
    /// <summary>inv_freq (head_dim/2) for <paramref name="theta"/>, scaled. theta^(-2i/d) is computed in fp64.</summary>
    public double[] InverseFrequencies(int headDim, double theta) => Apply(PlainInverseFrequencies(headDim, theta));

    /// <summary>theta^(-2i/d), i = 0 .. d/2−1: the unscaled rotary frequencies.</summary>
    public static double[] PlainInverseFrequencies(int headDim, double theta) =>
        Enumerable.Range(0, headDim / 2).Select(i => Math.Pow(theta, -2.0 * i / headDim)).ToArray();

    public double[] Apply(double[] invFreq)
    {
        double lowWavelen = OriginalMaxPositionEmbeddings / LowFreqFactor;
        double highWavelen = OriginalMaxPositionEmbeddings / HighFreqFactor;
        var result = new double[invFreq.Length];
        for (int i = 0; i < invFreq.Length; i++)
        {
            double f = invFreq[i], wavelen = 2 * Math.PI / f;
            if (wavelen < highWavelen) result[i] = f;
            else if (wavelen > lowWavelen) result[i] = f / Factor;
            else
            {
                double smooth = (OriginalMaxPositionEmbeddings / wavelen - LowFreqFactor) / (HighFreqFactor - LowFreqFactor);
                result[i] = (1 - smooth) * f / Factor + smooth * f;
            }
        }
        return result;
    }

    public void Validate(string source, int headDim)
    {
        PeftFormatException Bad(string key, double value, string problem) =>
            new($"{source}: key 'rope_scaling.{key}' has value {value.ToString("R", CultureInfo.InvariantCulture)}: {problem}");
        if (!(Factor > 0) || !double.IsFinite(Factor)) throw Bad("factor", Factor, "must be a positive number");
        if (!(LowFreqFactor > 0) || !double.IsFinite(LowFreqFactor)) throw Bad("low_freq_factor", LowFreqFactor, "must be a positive number");
        if (!(HighFreqFactor > LowFreqFactor) || !double.IsFinite(HighFreqFactor))
            throw Bad("high_freq_factor", HighFreqFactor, $"must be greater than low_freq_factor {LowFreqFactor.ToString(CultureInfo.InvariantCulture)}");
        if (OriginalMaxPositionEmbeddings <= 0) throw Bad("original_max_position_embeddings", OriginalMaxPositionEmbeddings, "must be a positive integer");
    }

    public JsonObject ToJson() => new()
    {
        ["factor"] = Factor,
        ["high_freq_factor"] = HighFreqFactor,
        ["low_freq_factor"] = LowFreqFactor,
        ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
        ["rope_type"] = "llama3",
    };

    /// <summary>Parse config.json's rope_scaling: null/absent/default -> null, llama3 -> the record, other types refused.</summary>
    internal static Llama3RopeScaling? FromJson(JsonNode? node, LlamaConfig.Reader r)
    {
        if (node is null || node.GetValueKind() == JsonValueKind.Null) return null;
        if (node is not JsonObject o) throw r.Bad("rope_scaling", "expected an object with rope_type and its parameters, or null");
        var typeNode = o["rope_type"] ?? o["type"];
        var type = typeNode is JsonValue tv && tv.GetValueKind() == JsonValueKind.String ? tv.GetValue<string>() : null;
        if (type == "default") return null;
        if (type != "llama3")
            throw r.Bad("rope_scaling", $"rope_scaling type '{type ?? "(none)"}' is not supported (only 'llama3', or null for plain rotary embeddings)");
        double Number(string key)
        {
            if (o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number) return v.GetValue<double>();
            throw r.Bad("rope_scaling", $"a llama3 rope_scaling needs a number '{key}'");
        }
        double original = Number("original_max_position_embeddings");
        if (original != Math.Floor(original) || original <= 0 || original > int.MaxValue)
            throw r.Bad("rope_scaling", "original_max_position_embeddings must be a positive integer");
        return new Llama3RopeScaling(Number("factor"), Number("low_freq_factor"), Number("high_freq_factor"), (int)original);
    }
}
