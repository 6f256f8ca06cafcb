using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// Replaces a frozen base linear with a <see cref="FourBitLinear"/> (Dettmers et al. 2023, "QLoRA": 4-bit NormalFloat,
/// double quantization). The replacement holds new tensors only; the caller frees the layer it replaced.
/// </summary>
public abstract class FourBitQuantizer : IQuantizer, IQuantizedCheckpointReader
{
    protected FourBitQuantizer(FourBitType type) => Type = type;

    public FourBitType Type { get; }
    public string Name => FourBitCodebook.Name(Type);
    public abstract string Description { get; }

    /// <summary>4 + 32/B without double quantization; 4 + 8/B + 32/(256·B) with it (4.5 and 4.127 for B = 64).</summary>
    public double BitsPerParameter(IConfiguration options)
    {
        var o = FourBitQuantizationOptions.FromConfiguration(options);
        return BitsPerParameter(o.BlockSize, o.DoubleQuant);
    }

    /// <summary>
    /// What a quantized (out, in) weight will hold, <see cref="FourBitWeights.StorageBytes"/> (= the layer's
    /// <c>QuantizedBytes</c>) to the byte: packed codes ceil(n/2) bytes; with double quantization one uint8 absmax per
    /// block, one fp32 nested absmax per 256 blocks and the fp32 nested offset, else one fp32 absmax per block. The
    /// code tables are the shared constants (quantizing in memory never makes a per-layer table).
    /// </summary>
    public (long Codes, long Statistics)? QuantizedBytes(LinearSlot slot, IConfiguration options)
    {
        var o = FourBitQuantizationOptions.FromConfiguration(options);
        long n = slot.InFeatures * slot.OutFeatures, blocks = (n + o.BlockSize - 1) / o.BlockSize;
        long nestedBlocks = (blocks + FourBitWeights.NestedBlockSize - 1) / FourBitWeights.NestedBlockSize;
        return ((n + 1) / 2, o.DoubleQuant ? blocks + nestedBlocks * 4 + sizeof(float) : blocks * 4);
    }

    public static double BitsPerParameter(int blockSize, bool doubleQuant) =>
        doubleQuant ? 4 + 8.0 / blockSize + 32.0 / (FourBitWeights.NestedBlockSize * (double)blockSize) : 4 + 32.0 / blockSize;

    public ILinearLayer Quantize(string moduleName, ILinearLayer layer, IConfiguration options) =>
        Quantize(moduleName, layer, FourBitQuantizationOptions.FromConfiguration(options));

    public FourBitLinear Quantize(string moduleName, ILinearLayer layer, FourBitQuantizationOptions options)
    {
        using var scope = torch.NewDisposeScope();
        var dense = layer.DenseWeight(ScalarType.Float32);
        CheckFinite(moduleName, dense);
        var kernels = FourBitKernels.For(dense.device);
        var weights = kernels.Quantize(dense, Type, options.BlockSize, options.DoubleQuant);
        foreach (var (_, t) in weights.Tensors()) t.DetachFromDisposeScope();
        return new FourBitLinear(moduleName, weights, layer.Bias, options.ComputeDtype, kernels);
    }

    public bool Reads(JsonObject quantizationConfig) => BitsAndBytesLayout.TypeOf(quantizationConfig) == Type;

    public JsonObject QuantizationConfig(IConfiguration options, IReadOnlyList<string> skippedModules) =>
        BitsAndBytesLayout.QuantizationConfig(Type, FourBitQuantizationOptions.FromConfiguration(options), skippedModules);

    public bool IsQuantizedSlot(IReadOnlyCollection<string> suffixes) =>
        suffixes.Any(s => s.StartsWith(BitsAndBytesLayout.QuantStatePrefix, StringComparison.Ordinal));

    public ILinearLayer LoadQuantized(LinearSlot slot, IReadOnlyDictionary<string, Tensor> tensors, JsonObject quantizationConfig)
    {
        var computeName = quantizationConfig["bnb_4bit_compute_dtype"] is JsonValue v && v.TryGetValue<string>(out var s) ? s : "float32";
        var compute = FourBitQuantizationOptions.ParseComputeDtype(computeName)
            ?? throw new PeftDataException($"quantization_config: bnb_4bit_compute_dtype '{computeName}' is not supported (float32 or bfloat16)");
        var (weights, bias) = BitsAndBytesLayout.Read(slot, tensors);
        foreach (var (_, t) in weights.Tensors()) t.DetachFromDisposeScope();
        try
        {
            return new FourBitLinear(slot.Name, weights, bias, compute, FourBitKernels.For(weights.Packed.device));
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Refuse a weight with NaN or ±Inf (its absmax would poison the whole block), naming the layer.</summary>
    public static void CheckFinite(string moduleName, Tensor weight)
    {
        using var _ = torch.no_grad();
        using var finite = torch.isfinite(weight);
        if (finite.all().item<bool>()) return;
        using var bad = finite.logical_not().nonzero();
        long count = bad.shape[0];
        var first = string.Join(", ", Enumerable.Range(0, (int)bad.shape[1]).Select(d => bad[0, d].item<long>()));
        using var flat = weight.detach().flatten();
        using var idx = flat.isfinite().logical_not().nonzero();
        float value = flat[idx[0, 0]].item<float>();
        throw new PeftDataException(
            $"{moduleName}: weight has {count} non-finite value(s) (first {value} at [{first}]); NaN/Inf weights cannot be quantized");
    }
}

/// <summary>NF4 (4-bit NormalFloat) quantizer: <c>"quantization": { "name": "nf4" }</c>.</summary>
public sealed class Nf4Quantizer() : FourBitQuantizer(FourBitType.Nf4)
{
    public const string QuantizerName = "nf4";
    public override string Description => "NF4 4-bit NormalFloat (bitsandbytes-compatible, blocks of 64, double quantization): QLoRA's frozen base";
}

/// <summary>FP4 (1-2-1 float) quantizer: <c>"quantization": { "name": "fp4" }</c>.</summary>
public sealed class Fp4Quantizer() : FourBitQuantizer(FourBitType.Fp4)
{
    public const string QuantizerName = "fp4";
    public override string Description => "FP4 4-bit float (bitsandbytes-compatible, blocks of 64, double quantization)";
}
