using System.Runtime.CompilerServices;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Ia3;

/// <summary>
/// The IA³ vectors of one layer, one parameter per adapter, registered under the adapter's name: the model names them
/// <c>&lt;module&gt;.ia3_l.&lt;adapter&gt;</c>, as PEFT's <c>ia3_l</c> ParameterDict.
/// </summary>
public sealed class Ia3Vectors : nn.Module
{
    readonly Dictionary<string, Parameter> _byAdapter = new(StringComparer.Ordinal);

    public Ia3Vectors() : base(nameof(Ia3Vectors)) { }

    public Parameter this[string adapter] => _byAdapter[adapter];
    public bool Contains(string adapter) => _byAdapter.ContainsKey(adapter);
    public int Count => _byAdapter.Count;

    /// <summary>Adapter names in the order they were added.</summary>
    public IEnumerable<string> Names => _byAdapter.Keys;

    public void Add(string adapter, Parameter p)
    {
        _byAdapter[adapter] = p;
        register_parameter(adapter, p);
    }

    /// <summary>Unregister the adapter's vector and free it.</summary>
    public void Remove(string adapter)
    {
        if (!_byAdapter.Remove(adapter, out var p)) return;
        _internal_params.Remove(adapter);
        p.Dispose();
    }
}

/// <summary>
/// An IA³ linear (HF PEFT <c>peft.tuners.ia3.layer.Linear</c>), with l = l_1 ⊙ … ⊙ l_k over the enabled, unmerged adapters:
/// <list type="bullet">
/// <item>attention (not feed-forward): y = base(x) ⊙ l, x (…, in) → y (…, out), each l_i stored (out, 1);</item>
/// <item>feed-forward: y = base(x ⊙ l), each l_i stored (1, in).</item>
/// </list>
/// The wrapped layer stays frozen as <see cref="BaseLayer"/> (registered as <c>base_layer</c>).
/// </summary>
public sealed class Ia3Linear : nn.Module<Tensor, Tensor>, IAdapterLayer
{
#pragma warning disable IDE1006 // HF PEFT's attribute names
    readonly nn.Module<Tensor, Tensor> base_layer;
#pragma warning restore IDE1006
    [ComponentName(Name = "ia3_l")]
    readonly Ia3Vectors _vectors = new();

    // The wrapped layer as ILinearLayer, boxed so RegisterComponents does not register it a second time.
    readonly StrongBox<ILinearLayer> _base;
    readonly HashSet<string> _disabled = new(StringComparer.Ordinal);
    readonly HashSet<string> _merged = new(StringComparer.Ordinal);

    public Ia3Linear(string moduleName, ILinearLayer baseLayer, bool isFeedforward) : base(nameof(Ia3Linear))
    {
        ModuleName = moduleName;
        IsFeedforward = isFeedforward;
        _base = new StrongBox<ILinearLayer>(baseLayer);
        base_layer = baseLayer.Module;
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
        RegisterComponents();
    }

    /// <summary>HF name of the slot (<c>model.layers.0.mlp.down_proj</c>), for messages.</summary>
    public string ModuleName { get; }

    /// <summary>True: the vectors scale the input (shape (1, in)); false: the output (shape (out, 1)).</summary>
    public bool IsFeedforward { get; }

    public ILinearLayer BaseLayer => _base.Value!;
    public long InFeatures => BaseLayer.InFeatures;
    public long OutFeatures => BaseLayer.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => BaseLayer.Bias;
    public bool CanSetWeight => false;
    public void SetDenseWeight(Tensor weight) => throw new NotSupportedException($"'{ModuleName}' holds IA³ adapters: set its base layer's weight");

    /// <summary>The stored shape of a vector: (1, in) for a feed-forward module, (out, 1) otherwise.</summary>
    public long[] VectorShape => IsFeedforward ? [1, InFeatures] : [OutFeatures, 1];

    public bool HasAdapters => _vectors.Count > 0;
    public Parameter Vector(string adapter) => _vectors[adapter];
    public bool IsMerged(string adapter) => _merged.Contains(adapter);
    public void SetEnabled(string adapter, bool enabled) { if (enabled) _disabled.Remove(adapter); else _disabled.Add(adapter); }

    /// <summary>Add l = ones(VectorShape) (PEFT's init_ia3_weights), or N(1, 0.02²) when not, float32 on the base's device.</summary>
    public void AddAdapter(string adapter, bool initWeights)
    {
        if (string.IsNullOrEmpty(adapter) || adapter.Contains('.'))
            throw new ArgumentException($"adapter name '{adapter}' must be non-empty and contain no '.'", nameof(adapter));
        if (_vectors.Contains(adapter))
            throw new InvalidOperationException($"module '{ModuleName}' already has an IA³ adapter named '{adapter}'");
        using var noGrad = torch.no_grad();
        var device = base_layer.parameters().FirstOrDefault()?.device ?? torch.CPU;
        var l = initWeights
            ? torch.ones(VectorShape, dtype: ScalarType.Float32, device: device)
            : torch.randn(VectorShape, dtype: ScalarType.Float32, device: device).mul_(0.02).add_(1.0);
        _vectors.Add(adapter, new Parameter(l, requires_grad: false));
    }

    public void RemoveAdapter(string adapter)
    {
        if (!_vectors.Contains(adapter)) return;
        Unmerge(adapter);
        _vectors.Remove(adapter);
        _disabled.Remove(adapter);
    }

    /// <summary>Drop a merged adapter's vector for good (merge and unload): the base keeps the merged weight.</summary>
    public void ForgetMerged(string adapter)
    {
        _merged.Remove(adapter);
        _disabled.Remove(adapter);
        _vectors.Remove(adapter);
    }

    /// <summary>l: the product of the active vectors, flattened to (in,) or (out,); null when none is active.</summary>
    Tensor? ActiveScale()
    {
        Tensor? l = null;
        foreach (var name in _vectors.Names)
        {
            if (_disabled.Contains(name) || _merged.Contains(name)) continue;
            var v = _vectors[name].flatten();
            l = l is null ? v : l * v;
        }
        return l;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var l = ActiveScale();
        Tensor y;
        if (IsFeedforward) y = base_layer.call(l is null ? x : x * l.to(x.dtype));   // W (l ⊙ x) + b, l (in,)
        else
        {
            y = base_layer.call(x);                                                  // W x + b
            if (l is not null) y = y * l.to(y.dtype);                                // ⊙ l, l (out,)
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>W ⊙ l: l (out, 1) scales W's rows, l (1, in) its columns.</summary>
    static Tensor Scaled(Tensor w, Tensor l) => w * l;

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var w = BaseLayer.DenseWeight(ScalarType.Float32);                                       // (out, in)
        if (ActiveScale() is { } l) w = Scaled(w, l.reshape(VectorShape));
        return w.to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>W ← W ⊙ l, and b ← l ⊙ b for an output scale. With <paramref name="safe"/>, a non-finite result is refused (nothing changes).</summary>
    public void Merge(string adapter, bool safe)
    {
        if (_merged.Contains(adapter)) return;
        if (!BaseLayer.CanSetWeight)
            throw new InvalidOperationException($"cannot merge IA³ into '{ModuleName}': its base layer ({BaseLayer.GetType().Name}) cannot take a new weight");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var l = _vectors[adapter].detach();
        var w = Scaled(BaseLayer.DenseWeight(ScalarType.Float32), l);
        if (safe && !w.isfinite().all().item<bool>())
            throw new InvalidOperationException($"merging IA³ adapter '{adapter}' into '{ModuleName}' gives non-finite weights; not merged");
        BaseLayer.SetDenseWeight(w);
        if (!IsFeedforward && BaseLayer.Bias is { } b) b.mul_(l.flatten().to(b.dtype));
        _merged.Add(adapter);
    }

    /// <summary>W ← W ⊘ l, b ← b ⊘ l (PEFT adds 1e-8 to l before dividing; so does this).</summary>
    public void Unmerge(string adapter)
    {
        if (!_merged.Remove(adapter)) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var l = _vectors[adapter].detach() + 1e-8;
        BaseLayer.SetDenseWeight(BaseLayer.DenseWeight(ScalarType.Float32) / l);
        if (!IsFeedforward && BaseLayer.Bias is { } b) b.div_(l.flatten().to(b.dtype));
    }
}
