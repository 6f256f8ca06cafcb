using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Quantization;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// Options of the <c>nf4</c> / <c>fp4</c> quantizers (the <c>quantization</c> section):
/// <c>{ "name": "nf4", "block_size": 64, "double_quant": true, "compute_dtype": "float32", "target_modules": [...], "skip_modules": [...] }</c>.
/// Defaults are bitsandbytes' / the QLoRA paper's: blocks of 64, double quantization on, fp32 compute.
/// </summary>
public sealed class FourBitQuantizationOptions : QuantizerTargetOptions, IValidatableOptions
{
    public const int DefaultBlockSize = 64;

    /// <summary>Weights per absmax block: a power of two in 32..4096 (bitsandbytes' supported sizes).</summary>
    [ConfigurationKeyName("block_size")] public int BlockSize { get; set; } = DefaultBlockSize;

    /// <summary>Quantize the absmax values too (8-bit dynamic map, blocks of 256): 4.127 instead of 4.5 bits per weight.</summary>
    [ConfigurationKeyName("double_quant")] public bool DoubleQuant { get; set; } = true;

    /// <summary>"float32" (default) or "bfloat16": the dtype the dequantized weight is multiplied in.</summary>
    [ConfigurationKeyName("compute_dtype")] public string ComputeDtypeName { get; set; } = "float32";

    public ScalarType ComputeDtype => ParseComputeDtype(ComputeDtypeName) ?? ScalarType.Float32;

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (!IsValidBlockSize(BlockSize)) yield return ("block_size", BlockSize, "must be a power of two from 32 to 4096");
        if (ParseComputeDtype(ComputeDtypeName) is null) yield return ("compute_dtype", ComputeDtypeName, "must be \"float32\" or \"bfloat16\"");
    }

    public static bool IsValidBlockSize(int b) => b is >= 32 and <= 4096 && (b & (b - 1)) == 0;

    public static ScalarType? ParseComputeDtype(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        "float32" or "fp32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        _ => null,
    };

    public static string ComputeDtypeToName(ScalarType t) => t == ScalarType.BFloat16 ? "bfloat16" : "float32";

    public static FourBitQuantizationOptions FromConfiguration(IConfiguration section) =>
        OptionsBinding.Bind<FourBitQuantizationOptions>(section, "name");
}
