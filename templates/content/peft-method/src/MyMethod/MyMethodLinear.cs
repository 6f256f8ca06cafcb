using System.Runtime.CompilerServices;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace MyMethod;

/// <summary>
/// The scales of one layer, one parameter per adapter, registered under the adapter's name: the model names them
/// <c>&lt;module&gt;.mymethod_g.&lt;adapter&gt;</c> (as HF PEFT names a ParameterDict entry).
/// </summary>
public sealed class ScaleVectors : nn.Module
{
    readonly Dictionary<string, Parameter> _byAdapter = new(StringComparer.Ordinal);

    public ScaleVectors() : base(nameof(ScaleVectors)) { }

    public Parameter this[string adapter] => _byAdapter[adapter];
    public bool Contains(string adapter) => _byAdapter.ContainsKey(adapter);
    public int Count => _byAdapter.Count;

    public void Add(string adapter, Parameter p)
    {
        _byAdapter[adapter] = p;
        register_parameter(adapter, p);
    }

    /// <summary>Unregister the adapter's scale and free it.</summary>
    public void Remove(string adapter)
    {
        if (!_byAdapter.Remove(adapter, out var p)) return;
        _internal_params.Remove(adapter);
        p.Dispose();
    }
}

/// <summary>
/// y = g_1 ⊙ … ⊙ g_k ⊙ base(x) over the enabled, unmerged adapters; x (…, in) → y (…, out), each g (out,).
/// The wrapped layer stays frozen as <see cref="BaseLayer"/> (registered as <c>base_layer</c>).
/// </summary>
public sealed class MyMethodLinear : nn.Module<Tensor, Tensor>, IAdapterLayer
{
#pragma warning disable IDE1006 // HF PEFT's attribute names
    readonly nn.Module<Tensor, Tensor> base_layer;
#pragma warning restore IDE1006
    [ComponentName(Name = "mymethod_g")]
    readonly ScaleVectors _scales = new();

    // The wrapped layer as ILinearLayer, boxed so RegisterComponents does not register it a second time.
    readonly StrongBox<ILinearLayer> _base;
    readonly HashSet<string> _disabled = new(StringComparer.Ordinal);
    readonly HashSet<string> _merged = new(StringComparer.Ordinal);

    public MyMethodLinear(string moduleName, ILinearLayer baseLayer) : base(nameof(MyMethodLinear))
    {
        ModuleName = moduleName;
        _base = new StrongBox<ILinearLayer>(baseLayer);
        base_layer = baseLayer.Module;
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
        RegisterComponents();
    }

    /// <summary>HF name of the slot (<c>model.layers.0.self_attn.q_proj</c>), for messages.</summary>
    public string ModuleName { get; }
    public ILinearLayer BaseLayer => _base.Value!;
    public long InFeatures => BaseLayer.InFeatures;
    public long OutFeatures => BaseLayer.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => BaseLayer.Bias;
    public bool CanSetWeight => false;
    public void SetDenseWeight(Tensor weight) => throw new NotSupportedException($"'{ModuleName}' holds adapters: set its base layer's weight");

    public bool HasAdapters => _scales.Count > 0;
    public Parameter Scale(string adapter) => _scales[adapter];
    public bool IsMerged(string adapter) => _merged.Contains(adapter);
    public void SetEnabled(string adapter, bool enabled) { if (enabled) _disabled.Remove(adapter); else _disabled.Add(adapter); }

    /// <summary>Add a scale g (out,) = 1 (or N(1, 0.02²) without <paramref name="initWeights"/>), float32, on the base's device.</summary>
    public void AddAdapter(string adapter, bool initWeights)
    {
        if (string.IsNullOrEmpty(adapter) || adapter.Contains('.'))
            throw new ArgumentException($"adapter name '{adapter}' must be non-empty and contain no '.'", nameof(adapter));
        if (_scales.Contains(adapter))
            throw new InvalidOperationException($"module '{ModuleName}' already has an adapter named '{adapter}'");
        using var noGrad = torch.no_grad();
        var device = base_layer.parameters().FirstOrDefault()?.device ?? torch.CPU;
        var g = initWeights
            ? torch.ones(OutFeatures, dtype: ScalarType.Float32, device: device)
            : torch.randn(OutFeatures, dtype: ScalarType.Float32, device: device).mul_(0.02).add_(1.0);
        _scales.Add(adapter, new Parameter(g, requires_grad: false));
    }

    public void RemoveAdapter(string adapter)
    {
        if (!_scales.Contains(adapter)) return;
        Unmerge(adapter);
        _scales.Remove(adapter);
        _disabled.Remove(adapter);
    }

    /// <summary>Drop a merged adapter's scale for good (merge and unload): the base keeps the merged weight.</summary>
    public void ForgetMerged(string adapter)
    {
        _merged.Remove(adapter);
        _disabled.Remove(adapter);
        _scales.Remove(adapter);
    }

    /// <summary>The product of the active scales (out,), or null when none is active. Caller disposes.</summary>
    Tensor? ActiveScale()
    {
        Tensor? g = null;
        foreach (var (name, p) in _scales.named_parameters(recurse: false))
        {
            if (_disabled.Contains(name) || _merged.Contains(name)) continue;
            g = g is null ? p.alias() : g * p;
        }
        return g;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = base_layer.call(x);              // (…, out)
        if (ActiveScale() is { } g) y = y * g;    // ⊙ (out,), broadcast over the leading dimensions
        return y.MoveToOuterDisposeScope();
    }

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var w = BaseLayer.DenseWeight(ScalarType.Float32);                 // (out, in)
        if (ActiveScale() is { } g) w = w * g.unsqueeze(1);                 // diag(g) W
        return w.to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>W ← diag(g) W, b ← g ⊙ b. With <paramref name="safe"/>, a non-finite result is refused (nothing changes).</summary>
    public void Merge(string adapter, bool safe)
    {
        if (_merged.Contains(adapter)) return;
        if (!BaseLayer.CanSetWeight)
            throw new InvalidOperationException($"cannot merge into '{ModuleName}': its base layer ({BaseLayer.GetType().Name}) cannot take a new weight");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = _scales[adapter].detach();
        var w = BaseLayer.DenseWeight(ScalarType.Float32) * g.unsqueeze(1);
        if (safe && !w.isfinite().all().item<bool>())
            throw new InvalidOperationException($"merging adapter '{adapter}' into '{ModuleName}' gives non-finite weights; not merged");
        BaseLayer.SetDenseWeight(w);
        if (BaseLayer.Bias is { } b) b.mul_(g.to(b.dtype));
        _merged.Add(adapter);
    }

    /// <summary>W ← diag(1/g) W, b ← b / g.</summary>
    public void Unmerge(string adapter)
    {
        if (!_merged.Remove(adapter)) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = _scales[adapter].detach();
        BaseLayer.SetDenseWeight(BaseLayer.DenseWeight(ScalarType.Float32) / g.unsqueeze(1));
        if (BaseLayer.Bias is { } b) b.div_(g.to(b.dtype));
    }
}
