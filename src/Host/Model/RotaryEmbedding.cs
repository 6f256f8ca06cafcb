using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// Rotary position embeddings (Su et al. 2021) in HF's rotate-half layout: for a head vector x (head_dim) at
/// position p, with inv_freq[i] = theta^(-2i/d) (i &lt; d/2) and angle[j] = p * inv_freq[j mod d/2],
/// <c>rope(x) = x * cos(angle) + rotate_half(x) * sin(angle)</c>, rotate_half(x) = cat(-x[d/2:], x[:d/2]).
/// (llama2.c rotates adjacent pairs instead; its importer permutes the q/k rows to this layout.)
/// With <c>rope_scaling</c> <c>llama3</c> the inverse frequencies are rescaled per band (<see cref="Llama3RopeScaling"/>).
/// Not a module: it has no parameters and its tables are computed per call.
/// </summary>
public sealed class RotaryEmbedding(int headDim, double theta, Llama3RopeScaling? scaling = null)
{
    public int HeadDim { get; } = headDim;
    public double Theta { get; } = theta;

    /// <summary>inv_freq (head_dim/2) in fp64: theta^(-2i/d), rescaled when the config has llama3 rope_scaling.</summary>
    public double[] InverseFrequencies { get; } = scaling?.InverseFrequencies(headDim, theta) ?? Llama3RopeScaling.PlainInverseFrequencies(headDim, theta);

    /// <summary>cos and sin tables (T, head_dim) fp32 for positions start .. start+T-1, computed in fp64.</summary>
    public (Tensor Cos, Tensor Sin) Tables(long start, long length, Device device)
    {
        using var scope = torch.NewDisposeScope();
        var invFreq = torch.tensor(InverseFrequencies, ScalarType.Float64, device);                 // (d/2)
        var positions = torch.arange(start, start + length, dtype: ScalarType.Float64, device: device); // (T)
        var angles = torch.outer(positions, invFreq);                                              // (T, d/2)
        var full = torch.cat(new[] { angles, angles }, dim: -1);                                   // (T, d)
        var cos = full.cos().to(ScalarType.Float32).MoveToOuterDisposeScope();
        var sin = full.sin().to(ScalarType.Float32).MoveToOuterDisposeScope();
        return (cos, sin);
    }

    /// <summary>
    /// x (B, heads, T, d) rotated by the tables (T, d). rotate_half(x) ⊙ sin = roll(x, d/2) ⊙ sin±, where
    /// roll(x, d/2) = cat(x[d/2:], x[:d/2]) and sin± = cat(−sin[:d/2], sin[d/2:]) (T, d): two (B, heads, T, d)
    /// tensors instead of five (the negated half, the concatenation, both products and their sum).
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        var half = x.shape[^1] / 2;
        var signedSin = torch.cat(new[] { sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half) }, dim: -1);   // (T, d)
        var swapped = x.roll(half, -1);                                         // cat(x2, x1)
        return (x * cos).addcmul_(swapped, signedSin, 1).MoveToOuterDisposeScope();
    }
}
