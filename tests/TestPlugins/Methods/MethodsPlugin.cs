using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Plugins;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.TestPlugins.Methods;

/// <summary>
/// Test plugin for the method contract matrix (tests/Peft.Contract.Tests): one small correct method,
/// <c>test-scale</c> (an IA³-like output scaling y = g ⊙ base(x), g (out,) initialised to ones), and copies of it
/// that each break exactly one property of the contract, so the tests can show the matrix names what broke.
/// </summary>
public sealed class MethodsPlugin : IPeftPlugin
{
    public string Name => "test-methods";
    public string Description => "test methods for the contract matrix: test-scale and deliberately broken copies";

    public void ConfigureServices(IServiceCollection services)
    {
        foreach (var fault in Enum.GetValues<Fault>())
            services.AddSingleton<IPeftMethod>(new ScaleMethod(fault));
    }
}

/// <summary>What a method breaks on purpose.</summary>
public enum Fault
{
    None,            // test-scale: honours the contract
    InitNotBase,     // broken-init: g starts at 1.05, so the adapted model is not the base at init
    TrainsBase,      // trains-base: leaves the base weight requiring grad
    LeaksTensor,     // leaky: keeps a copy of every training forward's output
    LossySave,       // lossy-save: its state dict rounds to bfloat16
    BadMerge,        // broken-merge: merges g twice
    IgnoresDisable,  // ignores-disable: Enabled = false changes nothing
    SharesAdapters,  // shared-adapters: a second adapter reuses the first one's parameters
    LaxLoad,         // lax-load: ignores unknown and missing tensors and wrong shapes
}

public sealed class ScaleMethod(Fault fault) : IPeftMethod
{
    public const string StateKey = ".test_scale";

    public Fault Fault { get; } = fault;

    public string Name => Fault switch
    {
        Fault.None => "test-scale",
        Fault.InitNotBase => "broken-init",
        Fault.TrainsBase => "trains-base",
        Fault.LeaksTensor => "leaky",
        Fault.LossySave => "lossy-save",
        Fault.BadMerge => "broken-merge",
        Fault.IgnoresDisable => "ignores-disable",
        Fault.SharesAdapters => "shared-adapters",
        Fault.LaxLoad => "lax-load",
        _ => throw new ArgumentOutOfRangeException(),
    };

    public string? PeftType => Fault == Fault.None ? "TEST_SCALE" : "TEST_SCALE_" + Name.ToUpperInvariant().Replace("-", "_");
    public string Description => $"test method ({Fault})";

    public sealed class ScaleOptions
    {
        /// <summary>Which kinds of slot to wrap: "attention" (q, k, v, o), "mlp", or "all" (every decoder projection).</summary>
        [ConfigurationKeyName("targets")] public string Targets { get; set; } = "all";
    }

    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options)
    {
        var o = OptionsBinding.Bind<ScaleOptions>(options, "name");
        var slots = model.LinearSlots.Where(s => s.IsDecoderProjection && o.Targets switch
        {
            "attention" => s.Kind is LinearKind.AttentionQuery or LinearKind.AttentionKey or LinearKind.AttentionValue or LinearKind.AttentionOutput,
            "mlp" => s.Kind is LinearKind.MlpGate or LinearKind.MlpUp or LinearKind.MlpDown,
            "all" => true,
            _ => throw new Peft.Abstractions.PeftConfigurationException("targets", o.Targets, "must be attention, mlp or all"),
        }).Select(s => s.Name).ToList();
        return AttachTo(model, adapterName, slots);
    }

    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig)
    {
        if ((string?)adapterConfig["peft_type"] != PeftType) return null;
        var targets = adapterConfig["target_modules"]!.AsArray().Select(n => (string)n!).ToList();
        return AttachTo(model, adapterName, targets);
    }

    ScaleAdapter AttachTo(IPeftModel model, string adapterName, IReadOnlyList<string> modules)
    {
        var layers = new List<(string Module, ScaledLinear Layer)>();
        foreach (var module in modules)
        {
            var current = model.GetLinear(module);
            if (current is not ScaledLinear layer)
            {
                layer = new ScaledLinear(current, Fault);
                model.SetLinear(module, layer);
            }
            layer.AddAdapter(adapterName);
            layers.Add((module, layer));
        }
        return new ScaleAdapter(this, model, adapterName, layers);
    }
}

/// <summary>y = base(x) ⊙ g_1 ⊙ g_2 ⊙ … over the enabled, unmerged adapters; g_k (out,) per adapter.</summary>
public sealed class ScaledLinear : nn.Module<Tensor, Tensor>, IAdapterLayer
{
#pragma warning disable IDE1006
    readonly nn.Module<Tensor, Tensor> base_layer;
#pragma warning restore IDE1006
    readonly Fault _fault;
    readonly Dictionary<string, Parameter> _scales = new(StringComparer.Ordinal);
    public readonly HashSet<string> Disabled = new(StringComparer.Ordinal);
    public readonly HashSet<string> Merged = new(StringComparer.Ordinal);
    readonly List<Tensor> _kept = new();

    public ScaledLinear(ILinearLayer baseLayer, Fault fault) : base(nameof(ScaledLinear))
    {
        BaseLayer = baseLayer;
        base_layer = baseLayer.Module;
        _fault = fault;
        RegisterComponents();
    }

    public ILinearLayer BaseLayer { get; }
    public Parameter Scale(string adapter) => _scales[adapter];

    public void AddAdapter(string adapter)
    {
        Parameter g;
        if (_fault == Fault.SharesAdapters && _scales.Count > 0) g = _scales.Values.First();
        else
        {
            using var _ = torch.no_grad();
            g = new Parameter(torch.full(OutFeatures, _fault == Fault.InitNotBase ? 1.05f : 1f, dtype: ScalarType.Float32), requires_grad: false);
        }
        _scales[adapter] = g;
        register_parameter("scale_" + adapter, g);
        if (_fault == Fault.TrainsBase)
            foreach (var (_, p) in base_layer.named_parameters()) p.requires_grad_(true);
    }

    public long InFeatures => BaseLayer.InFeatures;
    public long OutFeatures => BaseLayer.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => BaseLayer.Bias;
    public bool CanSetWeight => false;
    public void SetDenseWeight(Tensor weight) => throw new NotSupportedException("set the base layer's weight");

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var w = BaseLayer.DenseWeight(ScalarType.Float32);
        foreach (var (name, g) in Active()) w = w * g.unsqueeze(1);
        return w.to(dtype).MoveToOuterDisposeScope();
    }

    IEnumerable<(string, Parameter)> Active() =>
        _scales.Where(kv => !Merged.Contains(kv.Key) && (_fault == Fault.IgnoresDisable || !Disabled.Contains(kv.Key))).Select(kv => (kv.Key, kv.Value));

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = base_layer.call(x);
        foreach (var (_, g) in Active()) y = y * g;
        if (_fault == Fault.LeaksTensor && training) _kept.Add(y.detach().clone().DetachFromDisposeScope());
        return y.MoveToOuterDisposeScope();
    }

    public void Merge(string adapter)
    {
        if (Merged.Contains(adapter)) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = _scales[adapter].unsqueeze(1);
        var w = BaseLayer.DenseWeight(ScalarType.Float32) * g;
        if (_fault == Fault.BadMerge) w = w * g;
        BaseLayer.SetDenseWeight(w);
        Merged.Add(adapter);
    }

    public void Unmerge(string adapter)
    {
        if (!Merged.Remove(adapter)) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        BaseLayer.SetDenseWeight(BaseLayer.DenseWeight(ScalarType.Float32) / _scales[adapter].unsqueeze(1));
    }
}

public sealed class ScaleAdapter(ScaleMethod method, IPeftModel model, string name, List<(string Module, ScaledLinear Layer)> layers) : IAdapter
{
    bool _enabled = true;

    public string Name { get; } = name;
    public string MethodName => method.Name;
    public IReadOnlyList<string> TargetModules => layers.Select(l => l.Module).ToList();

    public IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters =>
        layers.Select(l => ($"{l.Module}.scale_{Name}", l.Layer.Scale(Name))).ToList();

    public IReadOnlyDictionary<string, Tensor> GetStateDict() =>
        layers.ToDictionary(l => l.Module + ScaleMethod.StateKey,
            l => method.Fault == Fault.LossySave ? l.Layer.Scale(Name).to(ScalarType.BFloat16).to(ScalarType.Float32) : (Tensor)l.Layer.Scale(Name));

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors)
    {
        var expected = layers.ToDictionary(l => l.Module + ScaleMethod.StateKey, l => l.Layer.Scale(Name));
        using var noGrad = torch.no_grad();
        foreach (var (key, tensor) in tensors)
        {
            if (!expected.TryGetValue(key, out var target))
            {
                if (method.Fault == Fault.LaxLoad) continue;
                throw new InvalidDataException($"tensor '{key}' matches no module of adapter '{Name}'");
            }
            if (!tensor.shape.SequenceEqual(target.shape))
            {
                if (method.Fault == Fault.LaxLoad) continue;
                throw new InvalidDataException($"tensor '{key}' has shape [{string.Join(", ", tensor.shape)}], the adapter's parameter [{string.Join(", ", target.shape)}]");
            }
            target.copy_(tensor);
        }
        var missing = expected.Keys.FirstOrDefault(k => !tensors.ContainsKey(k));
        if (missing is not null && method.Fault != Fault.LaxLoad) throw new InvalidDataException($"tensor '{missing}' is missing");
    }

    public JsonObject ToAdapterConfig() => new()
    {
        ["peft_type"] = method.PeftType,
        ["target_modules"] = new JsonArray(layers.Select(l => (JsonNode?)JsonValue.Create(l.Module)).ToArray()),
    };

    public bool Enabled
    {
        get => _enabled;
        set
        {
            _enabled = value;
            foreach (var (_, layer) in layers)
                if (value) layer.Disabled.Remove(Name); else layer.Disabled.Add(Name);
        }
    }

    public bool Merged => layers.All(l => l.Layer.Merged.Contains(Name));
    public void Merge(bool safe = true) { foreach (var (_, l) in layers) l.Merge(Name); }
    public void Unmerge() { foreach (var (_, l) in layers) l.Unmerge(Name); }

    public void Remove()
    {
        Unmerge();
        foreach (var (module, layer) in layers) model.SetLinear(module, layer.BaseLayer);
    }

    public void MergeAndUnload(bool safe = true)
    {
        Merge(safe);
        foreach (var (module, layer) in layers) model.SetLinear(module, layer.BaseLayer);
    }
}
