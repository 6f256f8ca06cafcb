using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;
using static TorchSharp.torch;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// A quantized linear layer that can be written to a model folder as it is held (e.g. bitsandbytes' 4-bit layout:
/// <c>weight</c> packed uint8, <c>weight.absmax</c>, <c>weight.quant_map</c>, <c>weight.nested_absmax</c>,
/// <c>weight.nested_quant_map</c>, <c>weight.quant_state.bitsandbytes__nf4</c>), so it loads back without re-quantizing.
/// </summary>
public interface IQuantizedLinear : ILinearLayer, IQuantizedWeightBytes
{
    /// <summary>The quantizer that reads these tensors back (<see cref="IQuantizedCheckpointReader.LoadQuantized"/>).</summary>
    string QuantizerName { get; }

    /// <summary>
    /// The tensors to store under the slot's module name, keyed by suffix (<c>weight</c>, <c>weight.absmax</c>, ...;
    /// a bias as <c>bias</c>). New CPU tensors; the caller disposes them.
    /// </summary>
    IReadOnlyList<(string Suffix, Tensor Tensor)> CheckpointTensors();
}

/// <summary>
/// Implemented by a quantizer whose layers can be saved in, and loaded from, a model folder: the folder's
/// <c>config.json</c> carries <c>quantization_config</c> (transformers' format) and each quantized slot's tensors.
/// </summary>
public interface IQuantizedCheckpointReader
{
    /// <summary>True when this quantizer reads folders with this <c>quantization_config</c>.</summary>
    bool Reads(JsonObject quantizationConfig);

    /// <summary>
    /// transformers' <c>quantization_config</c> describing layers made with <paramref name="options"/>;
    /// <paramref name="skippedModules"/> are the linear slots left in full precision.
    /// </summary>
    JsonObject QuantizationConfig(IConfiguration options, IReadOnlyList<string> skippedModules);

    /// <summary>
    /// True when the folder's tensors hold a quantized layer for the module (<paramref name="suffixes"/>: the suffixes
    /// present under its name, e.g. <c>weight</c>, <c>weight.absmax</c>).
    /// </summary>
    bool IsQuantizedSlot(IReadOnlyCollection<string> suffixes);

    /// <summary>
    /// Rebuild the quantized layer of <paramref name="slot"/> from its stored tensors (keyed by suffix, not owned by
    /// the callee; the layer copies what it keeps). Bad or inconsistent tensors throw <see cref="PeftDataException"/>
    /// naming the module and the tensor, in one line.
    /// </summary>
    ILinearLayer LoadQuantized(LinearSlot slot, IReadOnlyDictionary<string, Tensor> tensors, JsonObject quantizationConfig);
}
