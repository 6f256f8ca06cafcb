using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// A linear layer whose weight is stored as INT8 with one scale per output row (bitsandbytes' vector-wise
/// <c>Int8Params</c>: <c>SCB</c> = row absmax; here the scale s = absmax/127 is kept):
/// <code>
///   W (out, in) ≈ deq(W) = s[:, None] · q,   q int8 in [−127, 127],   s (out,) float32
///   forward :  y = x · deq(W)ᵀ + b                     deq(W) made on the fly and freed
///   backward:  ∂L/∂x = ∂L/∂y · deq(W);   ∂L/∂W = (∂L/∂y)ᵀ · x  into GradientProxy.grad (when it requires grad)
/// </code>
/// Trainable while quantized (<see cref="ITrainableQuantizedWeight"/>): <see cref="ApplyUpdate"/> re-quantizes an
/// updated weight with stochastic rounding (<see cref="Int8Quantizer.QuantizeStochastic"/>). The codes and scales are
/// module buffers (<c>weight</c> int8, <c>weight_scale</c>), not parameters.
/// </summary>
public sealed class Int8Linear : nn.Module<Tensor, Tensor>, ITrainableQuantizedWeight
{
    public const string WeightKey = "weight";
    public const string ScaleKey = "weight_scale";

    Tensor _codes;     // (out, in) int8
    Tensor _scale;     // (out,) float32
    // in a box: TorchSharp registers Parameter-typed fields as module parameters, and the proxy is not one
    sealed class ProxyBox(Parameter proxy) { public readonly Parameter Proxy = proxy; }
    readonly ProxyBox _proxyBox;
    Parameter _proxy => _proxyBox.Proxy;
#pragma warning disable IDE1006 // HF name
    readonly Parameter? bias;
#pragma warning restore IDE1006

    public Int8Linear(string moduleName, Tensor codes, Tensor scale, Tensor? bias) : base(nameof(Int8Linear))
    {
        if (codes.dtype != ScalarType.Int8 || codes.ndim != 2) throw new ArgumentException($"{moduleName}: INT8 codes must be a 2-D int8 tensor");
        if (scale.ndim != 1 || scale.shape[0] != codes.shape[0]) throw new ArgumentException($"{moduleName}: one scale per output row expected");
        ModuleName = moduleName;
        _codes = codes;
        _scale = scale;
        OutFeatures = codes.shape[0];
        InFeatures = codes.shape[1];
        using (var one = torch.zeros(1, dtype: ScalarType.Float32, device: codes.device))
            _proxyBox = new ProxyBox(new Parameter(one.expand(OutFeatures, InFeatures), requires_grad: false));
        _proxy.DetachFromDisposeScope();   // owned by this layer, whatever scope the caller runs in
        if (bias is not null)
        {
            this.bias = new Parameter(bias.detach().to(ScalarType.Float32).clone(), requires_grad: false);
            this.bias.DetachFromDisposeScope();
            register_parameter("bias", this.bias);
        }
        register_buffer(WeightKey, _codes);
        register_buffer(ScaleKey, _scale);
    }

    public string ModuleName { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => bias;
    public Parameter GradientProxy => _proxy;
    public Tensor Codes => _codes;
    public Tensor Scale => _scale;
    public long QuantizedBytes => _codes.NumberOfElements + _scale.NumberOfElements * 4;
    public long QuantizedWeightCount => OutFeatures * InFeatures;

    public override Tensor forward(Tensor x)
    {
        if (x.shape[^1] != InFeatures) throw new ArgumentException($"{ModuleName}: input has {x.shape[^1]} features, the layer takes {InFeatures}");
        using var scope = torch.NewDisposeScope();
        Tensor y;
        if (torch.is_grad_enabled() && (x.requires_grad || _proxy.requires_grad))
            y = Int8Matmul.apply(x, _proxy, this);
        else
        {
            using var noGrad = torch.no_grad();
            y = x.matmul(Dequantize().to_type(x.dtype).t());
        }
        if (bias is not null) y = y + (bias.dtype == y.dtype ? bias : bias.to(y.dtype));
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>NEW float32 (out, in) deq(W) = s[:, None]·q.</summary>
    internal Tensor Dequantize() => Int8Quantizer.Dequantize(_codes, _scale);

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        return Dequantize().to_type(dtype).MoveToOuterDisposeScope();
    }

    public bool CanSetWeight => true;

    /// <summary>Quantize a dense weight in (round to nearest, as the quantizer does).</summary>
    public void SetDenseWeight(Tensor weight)
    {
        CheckShape(weight);
        var (codes, scale) = Int8Quantizer.QuantizeNearest(weight);
        Replace(codes, scale);
    }

    public void ApplyUpdate(Tensor updatedWeight)
    {
        CheckShape(updatedWeight);
        var (codes, scale) = Int8Quantizer.QuantizeStochastic(updatedWeight);
        Replace(codes, scale);
    }

    public IReadOnlyDictionary<string, Tensor> QuantizedState => new Dictionary<string, Tensor> { [WeightKey] = _codes, [ScaleKey] = _scale };

    public void LoadQuantizedState(IReadOnlyDictionary<string, Tensor> state)
    {
        Tensor Get(string key, ScalarType dtype, long[] shape)
        {
            if (!state.TryGetValue(key, out var t)) throw new ArgumentException($"{ModuleName}: quantized state '{key}' is missing");
            if (t.dtype != dtype) throw new ArgumentException($"{ModuleName}: quantized state '{key}' is {t.dtype}, expected {dtype}");
            if (!t.shape.SequenceEqual(shape)) throw new ArgumentException($"{ModuleName}: quantized state '{key}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]");
            return t;
        }
        var codes = Get(WeightKey, ScalarType.Int8, [OutFeatures, InFeatures]);
        var scale = Get(ScaleKey, ScalarType.Float32, [OutFeatures]);
        using var noGrad = torch.no_grad();
        _codes.copy_(codes);
        _scale.copy_(scale);
    }

    void Replace(Tensor codes, Tensor scale)
    {
        using var noGrad = torch.no_grad();
        _codes.copy_(codes);
        _scale.copy_(scale);
        codes.Dispose();
        scale.Dispose();
    }

    void CheckShape(Tensor w)
    {
        if (!w.shape.SequenceEqual(new[] { OutFeatures, InFeatures }))
            throw new ArgumentException($"{ModuleName}: expected a weight of shape [{OutFeatures}, {InFeatures}], got [{string.Join(", ", w.shape)}]");
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _proxy.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>y = x·deq(W)ᵀ with the backward above; inputs (x, proxy), the layer passed as data.</summary>
    sealed class Int8Matmul : torch.autograd.SingleTensorFunction<Int8Matmul>
    {
        public override string Name => nameof(Int8Matmul);

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var layer = (Int8Linear)vars[2];
            ctx.save_data("layer", layer);
            ctx.save_for_backward([x]);
            using var scope = torch.NewDisposeScope();
            return x.matmul(layer.Dequantize().to_type(x.dtype).t()).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var layer = (Int8Linear)ctx.get_data("layer");
            var x = ctx.get_saved_variables()[0];
            Tensor gradInput, gradWeight;
            using (var scope = torch.NewDisposeScope())
            {
                var w = layer.Dequantize().to_type(gradOutput.dtype);
                gradInput = gradOutput.matmul(w).MoveToOuterDisposeScope();                            // (…, out)(out, in)
                gradWeight = gradOutput.reshape(-1, layer.OutFeatures).t()
                    .matmul(x.reshape(-1, layer.InFeatures).to_type(gradOutput.dtype)).to_type(ScalarType.Float32).MoveToOuterDisposeScope();   // (out, in)
            }
            x.Dispose();
            return [gradInput, gradWeight, null!];
        }
    }
}
