using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// A frozen linear layer whose weight is stored in 4 bits (NF4 or FP4, bitsandbytes' blockwise format, see
/// <see cref="FourBitWeights"/>) and dequantized on the fly (bitsandbytes' <c>Linear4bit</c> / <c>MatMul4Bit</c>):
/// <code>
///   forward :  y = x · deq(W)ᵀ + b          x (…, in) → y (…, out), product in compute_dtype, y in x's dtype
///   backward:  ∂L/∂x = ∂L/∂y · deq(W)        (…, out) → (…, in); the base gets no weight gradient
/// </code>
/// deq(W) is written into one reused buffer (<see cref="IFourBitKernels.Scratch"/>) right before each product and is
/// not kept for backward: training runs the product through an autograd function (<see cref="FourBitMatmul"/>) whose
/// backward dequantizes again, so a training step holds the packed weights only, never an fp32 copy of a layer. The
/// packed bytes and statistics are module buffers (<c>weight</c> uint8, <c>absmax</c>, <c>nested_absmax</c>), not parameters.
/// </summary>
public sealed class FourBitLinear : nn.Module<Tensor, Tensor>, IQuantizedLinear
{
    FourBitWeights _weights;
    readonly IFourBitKernels _kernels;
#pragma warning disable IDE1006 // HF name
    readonly Parameter? bias;
#pragma warning restore IDE1006

    /// <param name="moduleName">HF name of the slot, used in messages.</param>
    /// <param name="weights">The packed weight; the layer takes ownership.</param>
    /// <param name="bias">Copied (frozen) when given.</param>
    public FourBitLinear(string moduleName, FourBitWeights weights, Tensor? bias, ScalarType computeDtype, IFourBitKernels kernels)
        : base(nameof(FourBitLinear))
    {
        if (computeDtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new ArgumentException($"compute dtype must be Float32 or BFloat16, not {computeDtype}", nameof(computeDtype));
        ModuleName = moduleName;
        _weights = weights;
        _kernels = kernels;
        ComputeDtype = computeDtype;
        if (bias is not null)
        {
            using var _ = torch.no_grad();
            using var scope = torch.NewDisposeScope();
            this.bias = new Parameter(bias.detach().to(ScalarType.Float32).clone(), requires_grad: false);
            this.bias.DetachFromDisposeScope();   // owned by this module, whatever scope the caller runs in
            register_parameter("bias", this.bias);
        }
        foreach (var (name, t) in weights.Tensors()) register_buffer(name, t);
    }

    public string ModuleName { get; }
    public FourBitWeights Weights => _weights;
    public FourBitType Type => _weights.Type;
    public int BlockSize => _weights.BlockSize;
    public bool DoubleQuantized => _weights.DoubleQuantized;
    public ScalarType ComputeDtype { get; }
    public long InFeatures => _weights.InFeatures;
    public long OutFeatures => _weights.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => bias;

    public string QuantizerName => FourBitCodebook.Name(Type);

    /// <summary>bitsandbytes' saved tensors of this layer (<see cref="BitsAndBytesLayout"/>).</summary>
    public IReadOnlyList<(string Suffix, Tensor Tensor)> CheckpointTensors() => BitsAndBytesLayout.Write(_weights, bias);

    /// <summary>Bytes held for the weight (packed codes + statistics), bias excluded.</summary>
    public long WeightStorageBytes => _weights.StorageBytes;

    /// <summary><see cref="WeightStorageBytes"/>: the one count of every memory report (<see cref="QuantizedWeightBytes.Sum"/>) and of the planner.</summary>
    public long QuantizedBytes => _weights.StorageBytes;
    public long QuantizedWeightCount => _weights.Count;

    public override Tensor forward(Tensor x)
    {
        if (x.shape[^1] != InFeatures)
            throw new ArgumentException($"{ModuleName}: input has {x.shape[^1]} features, the layer takes {InFeatures}");
        using var scope = torch.NewDisposeScope();
        // Training: the autograd function keeps nothing but this layer for backward. TorchSharp's function node also
        // makes an output-shaped empty_like (to materialize an undefined incoming gradient); it is created in this
        // scope and freed when forward returns, which is safe because the output always gets a gradient when backward
        // reaches this node.
        var y = torch.is_grad_enabled() && x.requires_grad ? FourBitMatmul.apply(x, this) : Product(x);
        if (bias is not null) y = y + (bias.dtype == y.dtype ? bias : bias.to(y.dtype));
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>x · deq(W)ᵀ without recording a graph; result in x's dtype.</summary>
    internal Tensor Product(Tensor x)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var w = DequantizedForCompute();
        var xc = x.dtype == ComputeDtype ? x : x.to(ComputeDtype);
        var y = nn.functional.linear(xc, w);
        return (y.dtype == x.dtype ? y : y.to(x.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>g · deq(W) (the input gradient) without recording a graph; result in g's dtype.</summary>
    internal Tensor TransposedProduct(Tensor g)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var w = DequantizedForCompute();
        var gc = g.dtype == ComputeDtype ? g : g.to(ComputeDtype);
        var dx = gc.matmul(w);
        return (dx.dtype == g.dtype ? dx : dx.to(g.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>deq(W) (out, in) in the compute dtype: a view of the shared scratch buffer (fp32) or a bf16 copy of it.</summary>
    Tensor DequantizedForCompute()
    {
        var flat = _kernels.Scratch(_weights.Count);
        _kernels.Dequantize(_weights, flat);
        var w = flat.view(OutFeatures, InFeatures);
        return ComputeDtype == ScalarType.Float32 ? w : w.to(ComputeDtype);
    }

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = torch.no_grad();
        var w = torch.empty(OutFeatures, InFeatures, ScalarType.Float32);
        _kernels.Dequantize(_weights, w);
        if (dtype == ScalarType.Float32) return w;
        using (w) return w.to(dtype);
    }

    /// <summary>Setting a dense weight re-quantizes it (lossy) with the same type, block size and double quantization.</summary>
    public bool CanSetWeight => true;

    public void SetDenseWeight(Tensor weight)
    {
        if (!weight.shape.SequenceEqual(new[] { OutFeatures, InFeatures }))
            throw new ArgumentException($"{ModuleName}: SetDenseWeight expected shape [{OutFeatures}, {InFeatures}], got [{string.Join(", ", weight.shape)}]");
        FourBitQuantizer.CheckFinite(ModuleName, weight);
        using var fresh = _kernels.Quantize(weight, Type, BlockSize, DoubleQuantized);
        using var _ = torch.no_grad();
        // Same shapes: copy into the registered buffers (the module keeps its buffer objects).
        _weights.Packed.copy_(fresh.Packed);
        _weights.Absmax?.copy_(fresh.Absmax!);
        _weights.QuantizedAbsmax?.copy_(fresh.QuantizedAbsmax!);
        _weights.NestedAbsmax?.copy_(fresh.NestedAbsmax!);
        _weights.Offset = fresh.Offset;
        _weights.NestedMap = fresh.NestedMap;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _weights.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>
    /// y = x · deq(W)ᵀ as an autograd function (bitsandbytes' MatMul4Bit): nothing but the layer is kept for backward,
    /// which recomputes deq(W) and returns only the input gradient.
    /// </summary>
    sealed class FourBitMatmul : autograd.SingleTensorFunction<FourBitMatmul>
    {
        public override string Name => nameof(FourBitMatmul);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var layer = (FourBitLinear)vars[1];
            ctx.save_data("layer", layer);
            return layer.Product(x);
        }

        /// <summary>The input gradient this thread's previous backward call returned (see <see cref="backward"/>).</summary>
        [ThreadStatic] static Tensor? t_returned;

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var layer = (FourBitLinear)ctx.get_data("layer");
            // TorchSharp hands backward a new native handle per gradient and keeps the returned tensors' handles: both
            // would otherwise live in the caller's dispose scope until the training step ends, i.e. every quantized
            // layer's (tokens × out) and (tokens × in) gradients at once. The autograd engine holds its own references,
            // so release ours as soon as they are used: gradOutput here; the gradient returned by the previous call on
            // this thread (the engine copied it out when that call returned) now.
            t_returned?.Dispose();
            var dx = layer.TransposedProduct(gradOutput);
            gradOutput.Dispose();
            t_returned = dx;   // also in the caller's scope, which frees the last one (disposing twice is a no-op)
            return [dx, null!];
        }
    }
}
