using System.Text.Json.Nodes;
using Peft.Plugins.Lora;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Peft.Plugins.Dora;

/// <summary>
/// DoRA on one adapter of one layer (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"; HF PEFT
/// <c>DoraLinearLayer</c> / <c>DoraLinearVariant</c>). The weight is split into a magnitude m (out,) and a
/// direction, and LoRA adapts the direction:
/// <code>
///   W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_row           W (out, in)  A (r, in)  B (out, r)  m (out,)  s = alpha / r
///   wn = ‖W + s·BA‖_row  (out,), recomputed every forward and DETACHED (no gradient flows through it)
///   y  = (m / wn) ⊙ (W x + s·B A x) + bias          (the bias stays out of the scaling)
/// </code>
/// As PEFT computes it: <c>y = result + (m/wn − 1) ⊙ base_result + (m/wn) ⊙ s·B(A(dropout(x)))</c>, where
/// <c>base_result</c> is the layer's result so far minus the bias when dropout is off (or in eval), and
/// <c>W·dropout(x)</c> when dropout is on. m starts as the row norms of W + s·BA (with B = 0: of W), so the layer
/// starts equal to its base. A quantized base is read through its own forward and <c>DenseWeight()</c>
/// (dequantized); DoRA never knows which it has.
/// <para>
/// Speed: <c>wn</c> comes from the expanded square (<see cref="IDoraWeightNorm.ExpandedRowNorm"/>): ‖W_i‖² is cached
/// while the base is frozen and unchanged, and W Aᵀ is read as the base layer's own output on the r rows of A
/// (<c>base(A) − bias = A Wᵀ</c>), so no step copies, dequantizes or materialises an (out, in) weight.
/// </para>
/// </summary>
public sealed class DoraVariant : LoraVariant
{
    /// <summary>PEFT's attribute and file key of the magnitude.</summary>
    public const string MagnitudeKey = "lora_magnitude_vector";

    [ComponentName(Name = "weight")]
    Parameter _magnitude;

    readonly IDoraWeightNorm _norm;

    // ‖W_i‖² of the frozen base (out,), float32; null until first needed or after the base changed.
    Tensor? _baseRowNormSq;

    // wn kept by Merge so Unmerge can undo it (PEFT's "<adapter>-weight_norm" cache).
    Tensor? _mergedNorm;

    internal DoraVariant(long outFeatures, Device device, IDoraWeightNorm norm) : base(nameof(DoraVariant))
    {
        _norm = norm;
        _magnitude = new Parameter(torch.ones(outFeatures, dtype: ScalarType.Float32, device: device), requires_grad: true);
        RegisterComponents();
    }

    public override string ModuleKey => MagnitudeKey;

    /// <summary>m (out,).</summary>
    public Parameter Magnitude => _magnitude;

    public override IReadOnlyList<(string PeftKey, Parameter Parameter)> StateTensors => [(MagnitudeKey, _magnitude)];

    /// <summary>
    /// m = ‖W + s·BA‖_row (PEFT's dora_init; W dequantized for a quantized base), computed exactly as the forward
    /// computes wn, so that m / wn is exactly 1 until training moves A, B or m.
    /// </summary>
    public override void Initialize(LoraLinear layer, string adapter)
    {
        using var _ = torch.no_grad();
        using var norm = WeightNorm(layer, adapter);
        _magnitude.copy_(norm);
    }

    public override Tensor Forward(LoraLinear layer, string adapter, Tensor x, Tensor result)
    {
        using var scope = torch.NewDisposeScope();
        var a = layer.LoraA(adapter);                               // (r, in)
        var b = layer.LoraB(adapter);                               // (out, r)
        double s = layer.Scaling(adapter), p = layer.Dropout(adapter);
        var bias = layer.Bias;
        var bias32 = bias is null ? null : bias.dtype == ScalarType.Float32 ? bias : bias.to(ScalarType.Float32);
        var result32 = result.dtype == ScalarType.Float32 ? result : result.to(ScalarType.Float32);

        Tensor wn;
        using (torch.no_grad()) wn = WeightNorm(layer, adapter);    // (out,), detached
        var scale = _magnitude / wn;                                // m / wn (out,): the gradient reaches m only

        Tensor h, baseResult;
        if (layer.training && p > 0)
        {
            // PEFT: dropout applies to x for both the LoRA path and the re-computed base path W·dropout(x).
            h = nn.functional.dropout(x, p, training: true);
            baseResult = BaseWithoutBias(layer, h, bias32);                              // W·dropout(x)  (..., out)
        }
        else
        {
            h = x;
            baseResult = bias32 is null ? result32 : result32 - bias32;                 // the result without the bias
        }
        var lora = nn.functional.linear(nn.functional.linear(h, a), b);                 // B A h  (..., out)
        // y = result + (m/wn − 1)·base_result + (m/wn)·s·B A h, in PEFT's order: at init m/wn is exactly 1 (m and wn
        // come from the same computation), so the first term is exactly 0 and the layer is bit-identical to its base.
        var y = torch.addcmul(result32, baseResult, scale - 1, value: 1).addcmul_(lora, scale, value: s);
        return (y.dtype == result.dtype ? y : y.to(result.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>W' = (m / wn) ⊙ (W + s·BA), wn = ‖W + s·BA‖_row; wn is kept for <see cref="Unmerge"/> when asked.</summary>
    public override Tensor Merge(LoraLinear layer, string adapter, Tensor weight, bool keepForUnmerge)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var combined = weight + layer.DeltaWeight(adapter).to(weight.device);          // W + s·BA  (out, in)
        var wn = torch.linalg.vector_norm(combined, ord: 2, dims: [1]);                 // (out,)
        var merged = combined * (_magnitude.detach().to(weight.device) / wn).unsqueeze(1);
        if (keepForUnmerge)
        {
            _mergedNorm?.Dispose();
            _mergedNorm = wn.DetachFromDisposeScope();
        }
        return merged.MoveToOuterDisposeScope();
    }

    /// <summary>W = W' / (m / wn) − s·BA with the wn kept at merge time.</summary>
    public override Tensor Unmerge(LoraLinear layer, string adapter, Tensor mergedWeight)
    {
        var wn = _mergedNorm ?? throw new InvalidOperationException($"DoRA adapter '{adapter}' on '{layer.ModuleName}' has no weight norm kept from a merge; it cannot be unmerged");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var factor = (_magnitude.detach().to(mergedWeight.device) / wn.to(mergedWeight.device)).unsqueeze(1);
        var weight = mergedWeight / factor - layer.DeltaWeight(adapter).to(mergedWeight.device);
        _mergedNorm = null;
        wn.Dispose();
        return weight.MoveToOuterDisposeScope();
    }

    public override void BaseWeightChanged()
    {
        _baseRowNormSq?.Dispose();
        _baseRowNormSq = null;
    }

    /// <summary>wn = ‖W + s·BA‖_row by the expanded square (call under no_grad). (out,)</summary>
    internal Tensor WeightNorm(LoraLinear layer, string adapter)
    {
        using var scope = torch.NewDisposeScope();
        var a = layer.LoraA(adapter);
        var bias = layer.Bias;
        var bias32 = bias is null ? null : bias.to(ScalarType.Float32);
        var weightTimesAT = BaseWithoutBias(layer, a, bias32).t();                    // base(A) − bias = A Wᵀ → (out, r)
        var norm = _norm.ExpandedRowNorm(BaseRowNormSq(layer), weightTimesAT, a, layer.LoraB(adapter), layer.Scaling(adapter));
        return norm.MoveToOuterDisposeScope();
    }

    /// <summary>wn by materialising W + s·BA (the reference the expanded form is tested against). (out,)</summary>
    internal Tensor DirectWeightNorm(LoraLinear layer, string adapter)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var w = layer.BaseLayer.DenseWeight(ScalarType.Float32).to(_magnitude.device);
        return _norm.DirectRowNorm(w, layer.LoraA(adapter), layer.LoraB(adapter), layer.Scaling(adapter)).MoveToOuterDisposeScope();
    }

    /// <summary>‖W_i‖² (out,): cached while the base is frozen (recomputed after the layer writes it, or always if it trains).</summary>
    Tensor BaseRowNormSq(LoraLinear layer)
    {
        bool frozen = !layer.BaseLayer.Module.parameters().Any(p => p.requires_grad);
        if (frozen && _baseRowNormSq is not null && _baseRowNormSq.device == _magnitude.device) return _baseRowNormSq;
        Tensor sq;
        using (var w = layer.BaseLayer.DenseWeight(ScalarType.Float32))
        using (var wd = w.to(_magnitude.device))
            sq = wd.square().sum(1);                                                   // (out,)
        if (!frozen) return sq;                                                        // the caller's scope frees it
        _baseRowNormSq?.Dispose();
        _baseRowNormSq = sq.DetachFromDisposeScope();
        return _baseRowNormSq;
    }

    /// <summary>W·h without the bias, computed by the base layer itself (dense or quantized). h (..., in) → (..., out) float32.</summary>
    static Tensor BaseWithoutBias(LoraLinear layer, Tensor h, Tensor? bias32)
    {
        var o = layer.BaseLayer.Module.forward(h);
        if (o.dtype != ScalarType.Float32) o = o.to(ScalarType.Float32);
        return bias32 is null ? o : o - bias32;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _baseRowNormSq?.Dispose();
            _baseRowNormSq = null;
            _mergedNorm?.Dispose();
            _mergedNorm = null;
        }
        base.Dispose(disposing);
    }
}

/// <summary>Creates a <see cref="DoraVariant"/> per adapted layer and marks the adapter file with <c>use_dora: true</c>.</summary>
public sealed class DoraVariantFactory(IDoraWeightNorm norm) : ILoraVariantFactory
{
    /// <summary>The factory for a model on <paramref name="device"/>: the CPU norm here (a CUDA one would be chosen for CUDA devices).</summary>
    public static DoraVariantFactory For(Device device) => new(CpuDoraWeightNorm.Instance);

    public string MethodName => DoraMethod.MethodName;

    public LoraVariant Create(LoraLinear layer, string adapter)
    {
        var device = layer.LoraA(adapter).device;
        return new DoraVariant(layer.OutFeatures, device, norm);
    }

    public void WriteAdapterConfig(JsonObject config) => config["use_dora"] = true;
}
