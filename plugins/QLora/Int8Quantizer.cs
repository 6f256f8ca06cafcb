using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// <c>"quantization": {"name": "int8"}</c>: symmetric per-output-row absmax INT8 (bitsandbytes' vector-wise
/// <c>Int8Params</c> row statistics), the base of Q-GaLore. For a row w of W (out, in):
/// <code>
///   s = max|w| / 127          (s = 1 for an all-zero row)
///   nearest:     q = clamp(round(w / s), −127, 127)
///   stochastic:  q = clamp(floor(w / s + u), −127, 127),  u ~ U[0, 1)     E[s·q] = w (no clamping: |w/s| ≤ 127)
/// </code>
/// The quantized layers (<see cref="Int8Linear"/>) train through <see cref="ITrainableQuantizedWeight"/> when an
/// optimizer strategy trains quantized weights (GaLore); with a PEFT method they are a frozen base. CPU tensor ops
/// (no custom kernel): a CUDA path would replace the three static functions below.
/// </summary>
public sealed class Int8Quantizer : IQuantizer
{
    public const string QuantizerName = "int8";

    public string Name => QuantizerName;

    public string Description => "INT8 symmetric per-row absmax (bitsandbytes vector-wise); trainable with stochastic rounding (Q-GaLore)";

    /// <summary>8 bits per weight plus one float32 scale per row (reported for a 4096-wide row: 8 + 32/4096).</summary>
    public double BitsPerParameter(IConfiguration options) => 8 + 32.0 / 4096;

    /// <summary>The tensors an (out, in) weight holds: int8 codes (one byte per weight) and one fp32 scale per output row.</summary>
    public (long Codes, long Statistics)? QuantizedBytes(LinearSlot slot, IConfiguration options) => (slot.InFeatures * slot.OutFeatures, slot.OutFeatures * 4);

    public ILinearLayer Quantize(string moduleName, ILinearLayer layer, IConfiguration options)
    {
        OptionsBinding.Bind<Int8Options>(options, "name", "target_modules", "skip_modules");
        using var scope = torch.NewDisposeScope();
        var dense = layer.DenseWeight(ScalarType.Float32);
        var (codes, scale) = QuantizeNearest(dense);
        return new Int8Linear(moduleName, codes.DetachFromDisposeScope(), scale.DetachFromDisposeScope(), layer.Bias?.detach().clone());
    }

    /// <summary>No keys of its own.</summary>
    public sealed class Int8Options;

    /// <summary>s (out,) = row absmax / 127 (1 where the row is zero).</summary>
    static Tensor RowScale(Tensor w)
    {
        var absmax = w.abs().amax([1]);
        return torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax));
    }

    /// <summary>NEW (codes int8 (out, in), scales float32 (out,)) by round-to-nearest.</summary>
    public static (Tensor Codes, Tensor Scale) QuantizeNearest(Tensor weight)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var w = weight.detach().to_type(ScalarType.Float32);
        var s = RowScale(w);
        var q = (w / s.unsqueeze(1)).round().clamp(-127, 127).to_type(ScalarType.Int8);
        return (q.MoveToOuterDisposeScope(), s.MoveToOuterDisposeScope());
    }

    /// <summary>NEW (codes, scales) by stochastic rounding with torch's default generator: E[s·q] = w.</summary>
    public static (Tensor Codes, Tensor Scale) QuantizeStochastic(Tensor weight)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var w = weight.detach().to_type(ScalarType.Float32);
        var s = RowScale(w);
        var v = w / s.unsqueeze(1);
        var q = (v + torch.rand_like(v)).floor_().clamp_(-127, 127).to_type(ScalarType.Int8);
        return (q.MoveToOuterDisposeScope(), s.MoveToOuterDisposeScope());
    }

    /// <summary>NEW float32 s[:, None]·q.</summary>
    public static Tensor Dequantize(Tensor codes, Tensor scale)
    {
        using var scope = torch.NewDisposeScope();
        return (codes.to_type(ScalarType.Float32) * scale.unsqueeze(1)).MoveToOuterDisposeScope();
    }
}
