using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// A (out, in) weight in bitsandbytes' 4-bit blockwise format, as the tensors it is stored in:
/// <code>
///   n = out·in, flattened row-major; blocks of B (default 64; the last may be shorter)
///   Packed       uint8 (ceil(n/2), 1)   two codes per byte, FIRST element in the HIGH nibble; odd n padded with code 0
///   absmax_j     = max |w| over block j (fp32), stored either
///     plain:     Absmax fp32 (blocks)                                    → 4 + 32/B bits per weight
///     double:    QuantizedAbsmax uint8 (blocks), NestedAbsmax fp32 (ceil(blocks/256)), Offset fp32
///                absmax_j ≈ map8[QuantizedAbsmax_j] · NestedAbsmax_{j/256} + Offset   → 4 + 8/B + 32/(256·B) bits
///   w_i ≈ code[q_i] · absmax_{i/B}
/// </code>
/// Owns its tensors (dispose it, or the module that registered them).
/// </summary>
public sealed class FourBitWeights : IDisposable
{
    public const int NestedBlockSize = 256;

    public FourBitWeights(FourBitType type, int blockSize, long outFeatures, long inFeatures, Tensor packed,
                          Tensor? absmax, Tensor? quantizedAbsmax, Tensor? nestedAbsmax, float offset, float[]? nestedMap = null)
    {
        Type = type;
        BlockSize = blockSize;
        OutFeatures = outFeatures;
        InFeatures = inFeatures;
        Packed = packed;
        Absmax = absmax;
        QuantizedAbsmax = quantizedAbsmax;
        NestedAbsmax = nestedAbsmax;
        Offset = offset;
        NestedMap = nestedMap ?? DynamicQuantMap.Signed;
        if ((absmax is null) == (quantizedAbsmax is null) || (quantizedAbsmax is null) != (nestedAbsmax is null))
            throw new ArgumentException("exactly one of absmax (plain) or quantized absmax + nested absmax (double quantization) is required");
    }

    public FourBitType Type { get; }
    public int BlockSize { get; }
    public long OutFeatures { get; }
    public long InFeatures { get; }
    public long Count => OutFeatures * InFeatures;
    public long Blocks => (Count + BlockSize - 1) / BlockSize;
    public long NestedBlocks => (Blocks + NestedBlockSize - 1) / NestedBlockSize;
    public bool DoubleQuantized => QuantizedAbsmax is not null;

    /// <summary>uint8 (ceil(n/2), 1): bitsandbytes' <c>weight</c>.</summary>
    public Tensor Packed { get; private set; }

    /// <summary>fp32 (blocks), without double quantization: <c>weight.absmax</c>.</summary>
    public Tensor? Absmax { get; private set; }

    /// <summary>uint8 (blocks), with double quantization: <c>weight.absmax</c>.</summary>
    public Tensor? QuantizedAbsmax { get; private set; }

    /// <summary>fp32 (ceil(blocks/256)), with double quantization: <c>weight.nested_absmax</c>.</summary>
    public Tensor? NestedAbsmax { get; private set; }

    /// <summary>mean of the block absmax values, subtracted before the 8-bit quantization (<c>nested_offset</c>).</summary>
    public float Offset { get; internal set; }

    /// <summary>The 256-entry map the absmax values were quantized with (<c>weight.nested_quant_map</c>).</summary>
    public float[] NestedMap { get; internal set; }

    public float[] Codes => FourBitCodebook.Codes(Type);

    /// <summary>
    /// Bytes this weight holds (the layer's <c>IQuantizedWeightBytes.QuantizedBytes</c>, the one count every memory
    /// report and the planner use): its tensors (<see cref="Tensors"/>), the fp32 nested offset, and a nested map of its
    /// own (one loaded from a checkpoint that differs from bitsandbytes' map). The NF4/FP4 code book and the standard
    /// dynamic map are shared process-wide constants (a loaded <c>quant_map</c> must equal the code book; a loaded
    /// <c>nested_quant_map</c> equal to the standard map is replaced by the shared one), so no layer holds them.
    /// </summary>
    public long StorageBytes =>
        Packed.NumberOfElements * Packed.ElementSize
        + (Absmax is null ? 0 : Absmax.NumberOfElements * 4)
        + (QuantizedAbsmax is null ? 0 : QuantizedAbsmax.NumberOfElements + NestedAbsmax!.NumberOfElements * 4 + sizeof(float))
        + (ReferenceEquals(NestedMap, DynamicQuantMap.Signed) || !DoubleQuantized ? 0 : NestedMap.Length * sizeof(float));

    /// <summary>Every tensor held (for module buffer registration), with its bitsandbytes key suffix.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Tensors()
    {
        yield return ("weight", Packed);
        if (Absmax is not null) yield return ("absmax", Absmax);
        if (QuantizedAbsmax is not null) yield return ("absmax", QuantizedAbsmax);
        if (NestedAbsmax is not null) yield return ("nested_absmax", NestedAbsmax);
    }

    public void Dispose()
    {
        Packed.Dispose();
        Absmax?.Dispose();
        QuantizedAbsmax?.Dispose();
        NestedAbsmax?.Dispose();
    }
}
