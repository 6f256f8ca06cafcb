using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;

namespace MyMethod;

/// <summary>
/// Options of the method (the keys of the configuration's <c>method</c> section, besides <c>name</c>), bound
/// strictly by <see cref="OptionsBinding"/>: an unknown key or a bad value is an error naming both.
/// </summary>
public sealed class MyMethodOptions : IValidatableOptions
{
    /// <summary>Short module names to wrap (<c>q_proj</c>, <c>v_proj</c>, ...), as in HF PEFT's <c>target_modules</c>.</summary>
    [ConfigurationKeyName("target_modules")] public List<string> TargetModules { get; set; } = [];

    /// <summary>Start every scale at 1 (the adapted model equals the base); false: N(1, 0.02²), for tests only.</summary>
    [ConfigurationKeyName("init_weights")] public bool InitWeights { get; set; } = true;

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (TargetModules.Count == 0) yield return ("target_modules", null, "list at least one module (e.g. [\"q_proj\", \"v_proj\"])");
        foreach (var (m, i) in TargetModules.Select((m, i) => (m, i)))
            if (string.IsNullOrWhiteSpace(m)) yield return ($"target_modules:{i}", m, "is empty");
    }
}

/// <summary>
/// mymethod: each target linear's output is scaled by a learned vector, y = g ⊙ (W x + b), g ∈ R^out initialised to
/// ones (so the adapted model starts as the base). Mergeable: W' = diag(g) W, b' = g ⊙ b.
/// </summary>
public sealed class MyMethodMethod : IPeftMethod
{
    public const string MethodName = "mymethod";

    public string Name => MethodName;

    /// <summary>The <c>peft_type</c> in <c>adapter_config.json</c>.</summary>
    public string? PeftType => "MYMETHOD";

    public string Description => "learned output scale per target module (y = g ⊙ W x), mergeable";

    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options)
    {
        var o = OptionsBinding.Bind<MyMethodOptions>(options, "name");
        return AttachTo(model, adapterName, SelectTargets(model.LinearSlots, o), o.InitWeights);
    }

    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig)
    {
        if (!string.Equals((string?)adapterConfig["peft_type"], PeftType, StringComparison.OrdinalIgnoreCase)) return null;
        var o = new MyMethodOptions
        {
            TargetModules = adapterConfig["target_modules"] is JsonArray a ? a.Select(n => (string)n!).ToList()
                : throw new InvalidDataException("adapter_config.json: 'target_modules' must be a list of module names"),
        };
        // The weights are loaded next (LoadStateDict), so the initial values do not matter.
        return AttachTo(model, adapterName, SelectTargets(model.LinearSlots, o), initWeights: true);
    }

    /// <summary>Trainable state: one float32 per output feature of each target, its gradient, AdamW's two moments.</summary>
    public MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        var o = OptionsBinding.Bind<MyMethodOptions>(options, "name");
        var targets = SelectTargets(slots, o);
        long count = targets.Sum(s => s.OutFeatures);
        return new MemoryEstimate(count, count * sizeof(float), count * sizeof(float), 2 * count * sizeof(float)) { TensorCount = targets.Count };
    }

    /// <summary>The slots whose short name is listed (the model says what each slot is: no name parsing here).</summary>
    static List<LinearSlot> SelectTargets(IReadOnlyList<LinearSlot> slots, MyMethodOptions o)
    {
        var unknown = o.TargetModules.FirstOrDefault(m => slots.All(s => s.ShortName != m));
        if (unknown is not null)
            throw new PeftConfigurationException("method:target_modules", unknown,
                $"matches no linear layer of the model (its modules: {string.Join(", ", slots.Select(s => s.ShortName).Distinct())})");
        return slots.Where(s => o.TargetModules.Contains(s.ShortName) && s.Kind != LinearKind.OutputHead).ToList();
    }

    MyMethodAdapter AttachTo(IPeftModel model, string adapterName, IReadOnlyList<LinearSlot> targets, bool initWeights)
    {
        var layers = new List<(string Module, MyMethodLinear Layer)>();
        try
        {
            foreach (var slot in targets)
            {
                var current = model.GetLinear(slot.Name);
                if (current is not MyMethodLinear layer)
                {
                    // The wrapper keeps the layer it wraps (given back on Remove); the model owns the wrapper.
                    layer = new MyMethodLinear(slot.Name, current);
                    model.SetLinear(slot.Name, layer);
                }
                layer.AddAdapter(adapterName, initWeights);
                layers.Add((slot.Name, layer));
            }
        }
        catch
        {
            foreach (var (_, layer) in layers) layer.RemoveAdapter(adapterName);
            throw;
        }
        return new MyMethodAdapter(this, model, adapterName, layers);
    }
}
