using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;

namespace Ia3;

/// <summary>
/// IA³ options with HF PEFT's <c>IA3Config</c> key names. <c>target_modules</c> and <c>feedforward_modules</c> are
/// lists (a module matches when its name equals an entry or ends with "." + entry) or a single string (a regex that
/// must match the whole module name), as in PEFT; the feed-forward modules must be among the targets.
/// </summary>
public sealed class Ia3Options : IValidatableOptions
{
    /// <summary>PEFT's defaults for Llama (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_...).</summary>
    public static readonly IReadOnlyList<string> DefaultTargetModules = ["k_proj", "v_proj", "down_proj"];
    public static readonly IReadOnlyList<string> DefaultFeedforwardModules = ["down_proj"];

    [ConfigurationKeyName("target_modules")] [SingleValueAllowed] public List<string>? TargetModules { get; set; }
    [ConfigurationKeyName("feedforward_modules")] [SingleValueAllowed] public List<string>? FeedforwardModules { get; set; }

    /// <summary>Start every vector at 1 (the adapted model equals the base); false: N(1, 0.02²) (testing only; PEFT draws randn).</summary>
    [ConfigurationKeyName("init_ia3_weights")] public bool InitIa3Weights { get; set; } = true;

    /// <summary>PEFT's flag for layers storing W as (in, out) (GPT-2's Conv1D); Llama's linears store (out, in), so it must be false.</summary>
    [ConfigurationKeyName("fan_in_fan_out")] public bool FanInFanOut { get; set; }

    /// <summary>Set when the option came as one string (a regex over the whole module name), as PEFT allows.</summary>
    public string? TargetRegex { get; internal set; }
    public string? FeedforwardRegex { get; internal set; }

    /// <summary>Bind the method section strictly; the string (regex) forms of the two module options are kept apart.</summary>
    public static Ia3Options From(IConfiguration section)
    {
        var o = OptionsBinding.Bind<Ia3Options>(section, "name");
        // The binder leaves a scalar where the class has a list: that is PEFT's regex form.
        if (section.GetSection("target_modules").Value is { } targets) { o.TargetRegex = CheckRegex(section, "target_modules", targets); o.TargetModules = null; }
        if (section.GetSection("feedforward_modules").Value is { } ff) { o.FeedforwardRegex = CheckRegex(section, "feedforward_modules", ff); o.FeedforwardModules = null; }
        return o;
    }

    static string CheckRegex(IConfiguration section, string key, string pattern)
    {
        var path = section is IConfigurationSection s ? $"{s.Path}:{key}" : key;
        try { _ = new Regex(pattern); }
        catch (ArgumentException e) { throw new PeftConfigurationException(path, pattern, $"is not a valid regular expression ({e.Message})"); }
        if (pattern.Length == 0) throw new PeftConfigurationException(path, pattern, "must not be empty");
        return pattern;
    }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (FanInFanOut) yield return ("fan_in_fan_out", true, "IA³ here wraps linear layers that store W as (out, in); fan_in_fan_out must be false");
        if (TargetModules is { Count: 0 }) yield return ("target_modules", null, "list at least one module (PEFT's default for Llama: [\"k_proj\", \"v_proj\", \"down_proj\"])");
    }
}

/// <summary>
/// IA³, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al. 2022, arXiv:2205.05638), as
/// HF PEFT implements it for linear layers. A learned vector l per target module rescales
/// <list type="bullet">
/// <item>an attention module's OUTPUT: y = l ⊙ (W x + b), l stored with shape (out, 1) (<c>k_proj</c>, <c>v_proj</c>);</item>
/// <item>a feed-forward module's INPUT: y = W (l ⊙ x) + b, l stored with shape (1, in) (<c>down_proj</c>).</item>
/// </list>
/// Every l starts at ones, so the adapted model starts as the base. Mergeable: W' = W ⊙ l (rows scaled for (out, 1),
/// columns for (1, in)), and b' = l ⊙ b for an output scale. Files as PEFT writes them: <c>adapter_config.json</c>
/// with <c>peft_type</c> "IA3", tensors <c>base_model.model.model.layers.N.self_attn.k_proj.ia3_l</c>.
/// </summary>
public sealed class Ia3Method : IPeftMethod
{
    public const string MethodName = "ia3";

    public string Name => MethodName;

    public string? PeftType => "IA3";

    public string Description => "IA³: learned vectors rescaling attention outputs (k_proj, v_proj) and feed-forward inputs (down_proj)";

    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options)
    {
        var o = Ia3Options.From(options);
        return AttachTo(model, adapterName, o, o.InitIa3Weights);
    }

    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig)
    {
        if (!string.Equals((string?)adapterConfig["peft_type"], PeftType, StringComparison.Ordinal)) return null;
        var o = new Ia3Options();
        (o.TargetModules, o.TargetRegex) = ReadModules(adapterConfig, "target_modules");
        (o.FeedforwardModules, o.FeedforwardRegex) = ReadModules(adapterConfig, "feedforward_modules");
        if (adapterConfig["fan_in_fan_out"] is JsonValue f && f.GetValue<bool>())
            throw new InvalidDataException("adapter_config.json: 'fan_in_fan_out' is true; IA³ here wraps linear layers that store W as (out, in)");
        // The weights are loaded next (LoadStateDict), so the initial values do not matter.
        return AttachTo(model, adapterName, o, initWeights: true);
    }

    /// <summary>Trainable state: one float32 per scaled feature, its gradient and AdamW's two moments.</summary>
    public MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        var o = Ia3Options.From(options);
        var targets = SelectTargets(slots, o);
        long count = targets.Sum(t => t.Feedforward ? t.Slot.InFeatures : t.Slot.OutFeatures);
        return new MemoryEstimate(count, count * sizeof(float), count * sizeof(float), 2 * count * sizeof(float)) { TensorCount = targets.Count };
    }

    static (List<string>?, string?) ReadModules(JsonObject config, string key) => config[key] switch
    {
        null => (null, null),
        JsonArray a => (a.Select(n => (string)n!).ToList(), null),
        JsonValue v when v.TryGetValue<string>(out var regex) => (null, regex),
        var other => throw new InvalidDataException($"adapter_config.json: '{key}' must be a list of module names or a regex string, not {other.ToJsonString()}"),
    };

    /// <summary>
    /// The target slots and which of them are feed-forward. A list entry matches a slot whose name equals it or ends
    /// with "." + entry; a single string is a regex over the whole name (PEFT's rules). The model names its slots:
    /// no knowledge of the architecture here.
    /// </summary>
    internal static List<(LinearSlot Slot, bool Feedforward)> SelectTargets(IReadOnlyList<LinearSlot> slots, Ia3Options o)
    {
        string? targetRegex = o.TargetRegex, feedforwardRegex = o.FeedforwardRegex;
        var targets = o.TargetModules ?? (targetRegex is null ? Ia3Options.DefaultTargetModules.ToList() : null);
        var feedforward = o.FeedforwardModules ?? (feedforwardRegex is null && o.TargetModules is null && targetRegex is null ? Ia3Options.DefaultFeedforwardModules.ToList() : null);

        bool Matches(LinearSlot s, List<string>? list, string? regex) =>
            regex is not null ? Regex.IsMatch(s.Name, $"^(?:{regex})$") : list!.Any(e => s.Name == e || s.Name.EndsWith("." + e, StringComparison.Ordinal));

        var candidates = slots.Where(s => s.Kind != LinearKind.OutputHead).ToList();
        if (targets is not null)
        {
            var unknown = targets.FirstOrDefault(e => !candidates.Any(s => Matches(s, [e], null)));
            if (unknown is not null)
                throw new PeftConfigurationException("method:target_modules", unknown,
                    $"matches no linear layer of the model (its modules: {string.Join(", ", candidates.Select(s => s.ShortName).Distinct())})");
        }
        var chosen = candidates.Where(s => Matches(s, targets, targetRegex)).ToList();
        if (chosen.Count == 0)
            throw new PeftConfigurationException("method:target_modules", targetRegex ?? string.Join(",", targets!), "matches no linear layer of the model");
        var result = chosen.Select(s => (s, feedforward is not null || feedforwardRegex is not null ? Matches(s, feedforward, feedforwardRegex) : false)).ToList();
        // PEFT: "feedforward_modules should be a subset of target_modules"
        if (feedforward is not null)
        {
            var outside = feedforward.FirstOrDefault(e => !chosen.Any(s => Matches(s, [e], null)));
            if (outside is not null)
                throw new PeftConfigurationException("method:feedforward_modules", outside, "is not among target_modules (feedforward_modules must be a subset of target_modules)");
        }
        return result;
    }

    Ia3Adapter AttachTo(IPeftModel model, string adapterName, Ia3Options o, bool initWeights)
    {
        var targets = SelectTargets(model.LinearSlots, o);
        var layers = new List<(string Module, Ia3Linear Layer)>();
        try
        {
            foreach (var (slot, feedforward) in targets)
            {
                var current = model.GetLinear(slot.Name);
                if (current is not Ia3Linear layer)
                {
                    // The wrapper keeps the layer it wraps (given back on Remove); the model owns the wrapper.
                    layer = new Ia3Linear(slot.Name, current, feedforward);
                    model.SetLinear(slot.Name, layer);
                }
                else if (layer.IsFeedforward != feedforward)
                    throw new PeftConfigurationException("method:feedforward_modules", slot.ShortName,
                        $"'{slot.Name}' already carries IA³ adapters that scale its {(layer.IsFeedforward ? "input" : "output")}; all adapters of a module must agree");
                layer.AddAdapter(adapterName, initWeights);
                layers.Add((slot.Name, layer));
            }
        }
        catch
        {
            foreach (var (module, layer) in layers)
            {
                layer.RemoveAdapter(adapterName);
                if (!layer.HasAdapters) model.SetLinear(module, layer.BaseLayer);
            }
            throw;
        }
        return new Ia3Adapter(this, model, adapterName, layers);
    }
}
