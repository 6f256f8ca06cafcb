using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// Replaces frozen base linear layers with quantized ones (NF4, INT8...). Applied by the host before a
/// method attaches, so any method wraps a quantized base (QLoRA = nf4 + lora, QLoRA+DoRA = nf4 + dora,
/// Q-GaLore = int8 + galore optimizer strategy).
/// </summary>
public interface IQuantizer
{
    /// <summary>Name used in configuration (<c>"Quantization": { "Name": "nf4" }</c>).</summary>
    string Name { get; }
    string Description { get; }

    /// <summary>Bits of storage per weight, statistics included (e.g. 4.127 for NF4 with double quantization).</summary>
    double BitsPerParameter(IConfiguration options);

    /// <summary>
    /// The exact bytes a quantized <paramref name="slot"/> will hold, (codes, statistics), for the memory planner:
    /// codes + statistics must equal the layer's <see cref="IQuantizedWeightBytes.QuantizedBytes"/> (the one count
    /// training reports) to the byte. Null (the default) lets the planner use <see cref="BitsPerParameter"/>.
    /// </summary>
    (long Codes, long Statistics)? QuantizedBytes(LinearSlot slot, IConfiguration options) => null;

    /// <summary>
    /// The slots to replace, from the options' <c>target_modules</c> / <c>skip_modules</c> (default: every decoder
    /// projection, see <see cref="QuantizationTargets"/>). The host replaces each and frees the layer it replaced.
    /// </summary>
    IReadOnlyList<LinearSlot> SelectTargets(IReadOnlyList<LinearSlot> slots, IConfiguration options) => QuantizationTargets.Select(slots, options);

    /// <summary>A frozen quantized replacement for <paramref name="layer"/>; the caller puts it in the slot.</summary>
    /// <remarks>The result must not share storage with <paramref name="layer"/>: the caller disposes the replaced layer.</remarks>
    ILinearLayer Quantize(string moduleName, ILinearLayer layer, IConfiguration options);
}
