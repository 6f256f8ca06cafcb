using System.Runtime.CompilerServices;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Peft.Plugins.Lora;

/// <summary>
/// A linear layer with low-rank adapters (Hu et al. 2021, "LoRA"; HF PEFT <c>lora.Linear</c>):
/// <code>
///   y = base(x) + sum over active, unmerged adapters a of  scaling_a * B_a(A_a(dropout_a(x)))
///   x: (..., in)   A_a: (r_a, in)   B_a: (out, r_a)   y: (..., out)
///   scaling_a = alpha_a / r_a   (rsLoRA: alpha_a / sqrt(r_a))
/// </code>
/// The wrapped layer stays frozen as <see cref="BaseLayer"/> (registered as <c>base_layer</c>); the factors are
/// registered as <c>lora_A.&lt;adapter&gt;.weight</c> and <c>lora_B.&lt;adapter&gt;.weight</c>. Several named adapters
/// can live on one layer; merging folds <c>scaling * B @ A</c> into the base weight.
/// An adapter may carry a <see cref="LoraVariant"/> (DoRA...): it then computes its forward, merge and unmerge
/// through the variant, which the layer registers as <c>&lt;ModuleKey&gt;.&lt;adapter&gt;</c>.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>, IAdapterLayer
{
    /// <summary>Per-adapter hyper-parameters and state (the tensors live in lora_A / lora_B).</summary>
    sealed class AdapterState(int rank, double alpha, double scaling, double dropout, LoraVariant? variant)
    {
        public LoraVariant? Variant { get; } = variant;
        public int Rank { get; } = rank;
        public double Alpha { get; } = alpha;
        public double Scaling { get; } = scaling;
        public double Dropout { get; } = dropout;
        public bool Enabled { get; set; } = true;
        public bool Merged { get; set; }
    }

    [ComponentName(Name = "base_layer")]
    readonly nn.Module<Tensor, Tensor> _baseModule;

    [ComponentName(Name = "lora_A")]
    readonly LoraFactorDict _loraA = new();

    [ComponentName(Name = "lora_B")]
    readonly LoraFactorDict _loraB = new();

    // The wrapped layer as ILinearLayer. Boxed: RegisterComponents registers every field holding a Module, and the
    // layer is already registered once, as base_layer.
    readonly StrongBox<ILinearLayer> _baseBox;

    // Variant module dicts by ModuleKey (registered on first use, e.g. lora_magnitude_vector).
    readonly Dictionary<string, LoraVariantDict> _variantDicts = new(StringComparer.Ordinal);

    // Adapter states by name, and the names in the order they were added (forward sums in this order).
    readonly Dictionary<string, AdapterState> _adapters = new(StringComparer.Ordinal);
    readonly List<string> _order = new();
    readonly List<string> _mergeOrder = new();

    /// <param name="moduleName">HF name of the slot (<c>model.layers.0.self_attn.q_proj</c>), used in messages.</param>
    /// <param name="baseLayer">The layer to wrap; its parameters are frozen (requires_grad = false).</param>
    public LoraLinear(string moduleName, ILinearLayer baseLayer) : base(nameof(LoraLinear))
    {
        ModuleName = moduleName;
        _baseBox = new StrongBox<ILinearLayer>(baseLayer);
        _baseModule = baseLayer.Module;
        foreach (var p in _baseModule.parameters()) p.requires_grad = false;
        RegisterComponents();
    }

    public string ModuleName { get; }
    public ILinearLayer BaseLayer => _baseBox.Value!;
    public long InFeatures => BaseLayer.InFeatures;
    public long OutFeatures => BaseLayer.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => BaseLayer.Bias;
    public bool CanSetWeight => BaseLayer.CanSetWeight;

    /// <summary>Adapter names in the order they were added.</summary>
    public IReadOnlyList<string> AdapterNames => _order.ToList();
    public bool HasAdapter(string adapter) => _adapters.ContainsKey(adapter);

    /// <summary>A: (r, in).</summary>
    public Parameter LoraA(string adapter) => _loraA[Check(adapter)].Weight;

    /// <summary>B: (out, r).</summary>
    public Parameter LoraB(string adapter) => _loraB[Check(adapter)].Weight;

    public int Rank(string adapter) => _adapters[Check(adapter)].Rank;
    public double Alpha(string adapter) => _adapters[Check(adapter)].Alpha;
    public double Scaling(string adapter) => _adapters[Check(adapter)].Scaling;
    public bool IsEnabled(string adapter) => _adapters[Check(adapter)].Enabled;
    public bool IsMerged(string adapter) => _adapters[Check(adapter)].Merged;

    /// <summary>The adapter's dropout probability (applied to the adapter's input in training mode).</summary>
    public double Dropout(string adapter) => _adapters[Check(adapter)].Dropout;

    /// <summary>The adapter's variant (DoRA...), or null for plain LoRA.</summary>
    public LoraVariant? Variant(string adapter) => _adapters[Check(adapter)].Variant;

    /// <summary>
    /// Add an adapter: A (r, in) and B (out, r) as float32 trainable parameters on the base layer's device,
    /// initialized by <paramref name="init"/> (PiSSA also rewrites the base weight to the residual).
    /// With <paramref name="initialize"/> false both start at zero (weights to be loaded).
    /// With <paramref name="variant"/>, the adapter is of that variant (created once A and B hold their values).
    /// </summary>
    public void AddAdapter(string adapter, int rank, double alpha, double dropout = 0, bool useRsLora = false,
        LoraInitialization init = LoraInitialization.Default, bool initialize = true, ILoraVariantFactory? variant = null)
    {
        if (string.IsNullOrEmpty(adapter) || adapter.Contains('.'))
            throw new ArgumentException($"adapter name '{adapter}' must be non-empty and contain no '.'", nameof(adapter));
        if (_adapters.ContainsKey(adapter))
            throw new InvalidOperationException($"module '{ModuleName}' already has a LoRA adapter named '{adapter}'");
        if (rank <= 0) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"LoRA rank for '{ModuleName}' must be positive");
        if (!(dropout >= 0 && dropout < 1)) throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "LoRA dropout must be in [0, 1)");
        if (init == LoraInitialization.Pissa && initialize)
        {
            if (rank > Math.Min(InFeatures, OutFeatures))
                throw new ArgumentOutOfRangeException(nameof(rank), rank, $"PiSSA needs r <= min(in, out) = {Math.Min(InFeatures, OutFeatures)} for '{ModuleName}'");
            if (!BaseLayer.CanSetWeight)
                throw new InvalidOperationException($"PiSSA cannot initialize '{ModuleName}': its base layer ({BaseLayer.GetType().Name}) cannot take a new weight");
        }

        double scaling = useRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
        var device = BaseDevice();
        var a = new LoraFactor(torch.zeros(rank, InFeatures, dtype: ScalarType.Float32, device: device));
        var b = new LoraFactor(torch.zeros(OutFeatures, rank, dtype: ScalarType.Float32, device: device));
        try
        {
            if (initialize) Initialize(a.Weight, b.Weight, init, rank, scaling);
        }
        catch
        {
            a.Dispose();
            b.Dispose();
            throw;
        }
        _loraA.Add(adapter, a);
        _loraB.Add(adapter, b);
        _adapters[adapter] = new AdapterState(rank, alpha, scaling, dropout, null);
        _order.Add(adapter);
        if (variant is null) return;
        LoraVariant? v = null;
        try
        {
            v = variant.Create(this, adapter);
            if (!_variantDicts.TryGetValue(v.ModuleKey, out var dict))
            {
                dict = new LoraVariantDict();
                register_module(v.ModuleKey, dict);
                _variantDicts[v.ModuleKey] = dict;
            }
            dict.Add(adapter, v);
            _adapters[adapter] = new AdapterState(rank, alpha, scaling, dropout, v);
            v.Initialize(this, adapter);
        }
        catch
        {
            if (v is not null && _variantDicts.TryGetValue(v.ModuleKey, out var dict) && dict.named_children().Any(c => c.name == adapter)) dict.Remove(adapter);
            else v?.Dispose();
            _adapters[adapter] = new AdapterState(rank, alpha, scaling, dropout, null);
            RemoveAdapter(adapter);
            throw;
        }
    }

    void Initialize(Parameter a, Parameter b, LoraInitialization init, int rank, double scaling)
    {
        using var _ = torch.no_grad();
        switch (init)
        {
            case LoraInitialization.Default:
                // As nn.Linear: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0 so BA = 0.
                nn.init.kaiming_uniform_(a, a: Math.Sqrt(5));
                break;
            case LoraInitialization.Gaussian:
                nn.init.normal_(a, mean: 0, std: 1.0 / rank);
                break;
            case LoraInitialization.Random:
                nn.init.kaiming_uniform_(a, a: Math.Sqrt(5));
                nn.init.kaiming_uniform_(b, a: Math.Sqrt(5));
                break;
            case LoraInitialization.Pissa:
                PissaInit(a, b, rank, scaling);
                break;
        }
    }

    /// <summary>
    /// PiSSA (Meng et al. 2024; PEFT <c>pissa_init</c>). With the SVD W = U S Vh of the (out, in) base weight
    /// (PEFT names the factors V, S, Uh because it reasons about W^T):
    /// <code>
    ///   Sr = S[:r] / scaling
    ///   A  = diag(sqrt(Sr)) @ Vh[:r]      (r, in)
    ///   B  = U[:, :r] @ diag(sqrt(Sr))    (out, r)
    ///   W  = W - scaling * B @ A          (the residual; scaling*B@A is the best rank-r approximation of W)
    /// </code>
    /// so base(x) + scaling*B(A(x)) is unchanged at init, and training moves the principal components.
    /// </summary>
    void PissaInit(Parameter a, Parameter b, int rank, double scaling)
    {
        using var scope = torch.NewDisposeScope();
        var w = BaseLayer.DenseWeight(ScalarType.Float32).to(a.device);
        var (u, s, vh) = torch.linalg.svd(w, fullMatrices: false);
        var sqrtSr = (s[..rank] / scaling).sqrt();                 // (r,)
        var loraA = sqrtSr.unsqueeze(1) * vh[..rank];              // (r, in)
        var loraB = u[.., ..rank] * sqrtSr.unsqueeze(0);           // (out, r)
        var residual = w - scaling * loraB.matmul(loraA);          // (out, in)
        a.copy_(loraA);
        b.copy_(loraB);
        BaseLayer.SetDenseWeight(residual);
        BaseWeightChanged();
    }

    /// <summary>Enable or disable one adapter; disabling a merged adapter unmerges it first.</summary>
    public void SetEnabled(string adapter, bool enabled)
    {
        var state = _adapters[Check(adapter)];
        if (!enabled && state.Merged) Unmerge(adapter);
        state.Enabled = enabled;
    }

    /// <summary>
    /// y = base(x) + sum_a scaling_a * B_a(A_a(dropout_a(x))) over enabled, unmerged adapters. x (..., in) -> (..., out).
    /// Dropout only in training mode. The adapter path runs in the factors' dtype (float32) and is cast back.
    /// An adapter with a variant computes its term through <see cref="LoraVariant.Forward"/>.
    /// </summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var result = _baseModule.forward(x);
        var resultType = result.dtype;
        foreach (var name in _order)
        {
            var state = _adapters[name];
            if (!state.Enabled || state.Merged) continue;
            var a = _loraA[name].Weight;
            var b = _loraB[name].Weight;
            var h = x.dtype == a.dtype ? x : x.to(a.dtype);
            if (state.Variant is { } variant)
            {
                result = variant.Forward(this, name, h, result);
                continue;
            }
            if (training && state.Dropout > 0) h = nn.functional.dropout(h, state.Dropout, training: true);
            var down = nn.functional.linear(h, a);                              // (..., in) -> (..., r)
            if (resultType == b.dtype && result.is_contiguous())
            {
                // y += scaling * (down B^T) as one GEMM accumulating into y (addmm_, beta 1): no (..., out) delta and
                // no second (..., out) sum. y is the base layer's fresh output, which no backward formula of a linear
                // reads (a base whose backward did would fail loudly on autograd's version check, not compute wrong).
                var flat = result.view(-1, result.shape[^1]);                   // (N, out), a view
                flat.addmm_(down.view(-1, down.shape[^1]), b.t(), beta: 1, alpha: (float)state.Scaling);
                continue;
            }
            var delta = nn.functional.linear(down, b);                          // (..., r) -> (..., out)
            // y += scaling * delta in one kernel (no separate (..., out) scaled temporary)
            result = result.add(delta.dtype == resultType ? delta : delta.to(resultType), state.Scaling);
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>scaling * B @ A as a new (out, in) float32 tensor, detached.</summary>
    public Tensor DeltaWeight(string adapter)
    {
        var state = _adapters[Check(adapter)];
        using var _ = torch.no_grad();
        using var ba = _loraB[adapter].Weight.matmul(_loraA[adapter].Weight);
        return ba.mul(state.Scaling);
    }

    /// <summary>The effective weight: the base weight plus the deltas of enabled, unmerged adapters. (out, in), new.</summary>
    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        var w = BaseLayer.DenseWeight(ScalarType.Float32);
        foreach (var name in _order)
        {
            var state = _adapters[name];
            if (!state.Enabled || state.Merged) continue;
            w = state.Variant is { } variant ? variant.Merge(this, name, w, keepForUnmerge: false) : w + DeltaWeight(name).to(w.device);
        }
        return w.to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>Set the effective weight: the base takes <paramref name="weight"/> minus the active, unmerged deltas.</summary>
    public void SetDenseWeight(Tensor weight)
    {
        using var scope = torch.NewDisposeScope();
        var w = weight.to(ScalarType.Float32);
        foreach (var name in _order)
        {
            var state = _adapters[name];
            if (!state.Enabled || state.Merged) continue;
            if (state.Variant is not null)
                throw new InvalidOperationException($"cannot set the weight of '{ModuleName}' through its unmerged {state.Variant.GetType().Name} adapter '{name}' (the variant's effective weight has no unique inverse); merge or disable it first");
            w = w - DeltaWeight(name).to(w.device);
        }
        BaseLayer.SetDenseWeight(w);
        BaseWeightChanged();
    }

    /// <summary>
    /// Fold the adapter into the base: W += scaling * B @ A. With <paramref name="safe"/>, the sum is checked
    /// first and a non-finite result is refused (the base is left unchanged). No-op if already merged.
    /// </summary>
    public void Merge(string adapter, bool safe = true)
    {
        var state = _adapters[Check(adapter)];
        if (state.Merged) return;
        if (!BaseLayer.CanSetWeight)
            throw new InvalidOperationException($"cannot merge LoRA adapter '{adapter}' into '{ModuleName}': its base layer ({BaseLayer.GetType().Name}) cannot take a new weight");
        using (var scope = torch.NewDisposeScope())
        {
            var w = BaseLayer.DenseWeight(ScalarType.Float32);
            var merged = state.Variant is { } variant ? variant.Merge(this, adapter, w, keepForUnmerge: true) : w + DeltaWeight(adapter).to(w.device);
            if (safe && !torch.isfinite(merged).all().item<bool>())
            {
                if (state.Variant is not null) state.Variant.Unmerge(this, adapter, merged).Dispose();   // drop what it kept
                throw new InvalidOperationException($"merging LoRA adapter '{adapter}' into '{ModuleName}' gives non-finite weights (NaN or Inf); the adapter seems broken, nothing was merged");
            }
            BaseLayer.SetDenseWeight(merged);
            BaseWeightChanged();
        }
        state.Merged = true;
        _mergeOrder.Add(adapter);
    }

    /// <summary>Undo <see cref="Merge"/>: W -= scaling * B @ A. No-op if not merged.</summary>
    public void Unmerge(string adapter)
    {
        var state = _adapters[Check(adapter)];
        if (!state.Merged) return;
        using (var scope = torch.NewDisposeScope())
        {
            var w = BaseLayer.DenseWeight(ScalarType.Float32);
            BaseLayer.SetDenseWeight(state.Variant is { } variant ? variant.Unmerge(this, adapter, w) : w - DeltaWeight(adapter).to(w.device));
            BaseWeightChanged();
        }
        state.Merged = false;
        _mergeOrder.Remove(adapter);
    }

    /// <summary>Unmerge every merged adapter, the last merged first (PEFT's unmerge).</summary>
    public void UnmergeAll()
    {
        for (int i = _mergeOrder.Count - 1; i >= 0; i--) Unmerge(_mergeOrder[i]);
    }

    /// <summary>Keep a merged adapter's delta in the base weight and forget that it was merged (for merge-and-unload).</summary>
    internal void KeepMerged(string adapter) => _adapters[Check(adapter)].Merged = false;

    /// <summary>Delete an adapter (unmerging it first) and free its factors. Returns the number of adapters left.</summary>
    public int RemoveAdapter(string adapter)
    {
        var state = _adapters[Check(adapter)];
        if (state.Merged) Unmerge(adapter);
        _adapters.Remove(adapter);
        _order.Remove(adapter);
        _loraA.Remove(adapter);
        _loraB.Remove(adapter);
        if (state.Variant is { } variant) _variantDicts[variant.ModuleKey].Remove(adapter);
        return _adapters.Count;
    }

    /// <summary>
    /// Add the adapter's current delta to the base weight without marking it merged: used to undo PiSSA's residual
    /// when an attach is rolled back (right after init, W_res + scaling*B@A is the original W).
    /// </summary>
    internal void FoldIntoBase(string adapter)
    {
        using var scope = torch.NewDisposeScope();
        var w = BaseLayer.DenseWeight(ScalarType.Float32);
        BaseLayer.SetDenseWeight(w + DeltaWeight(adapter).to(w.device));
        BaseWeightChanged();
    }

    /// <summary>Tell every variant that the base weight was written.</summary>
    void BaseWeightChanged()
    {
        foreach (var state in _adapters.Values) state.Variant?.BaseWeightChanged();
    }

    /// <summary>
    /// Detach the base layer from this wrapper (so disposing the wrapper leaves it alive) and return it.
    /// Only when no adapter is left.
    /// </summary>
    internal ILinearLayer ReleaseBaseLayer()
    {
        if (_adapters.Count > 0) throw new InvalidOperationException($"module '{ModuleName}' still has LoRA adapters: {string.Join(", ", _order)}");
        _internal_submodules.Remove("base_layer");
        return BaseLayer;
    }

    Device BaseDevice()
    {
        var t = (Tensor?)_baseModule.parameters().FirstOrDefault() ?? _baseModule.buffers().FirstOrDefault();
        return t?.device ?? torch.CPU;
    }

    string Check(string adapter) => _adapters.ContainsKey(adapter) ? adapter
        : throw new KeyNotFoundException($"module '{ModuleName}' has no LoRA adapter named '{adapter}' (it has: {string.Join(", ", _order)})");
}
