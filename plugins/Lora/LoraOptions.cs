using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;

namespace Peft.Plugins.Lora;

/// <summary>How the LoRA factors start (HF PEFT <c>init_lora_weights</c>).</summary>
public enum LoraInitialization
{
    /// <summary><c>true</c> / "default": A ~ kaiming-uniform(a = sqrt(5)), B = 0, so BA = 0.</summary>
    Default,

    /// <summary>"gaussian": A ~ N(0, (1/r)^2), B = 0.</summary>
    Gaussian,

    /// <summary>"pissa": A, B from the top-r singular triplets of W; the base keeps the residual W - scaling*B@A.</summary>
    Pissa,

    /// <summary><c>false</c>: A and B both keep nn.Linear's default init (kaiming-uniform), so BA != 0 (testing only).</summary>
    Random,
}

/// <summary>
/// LoRA options, with HF PEFT's <c>LoraConfig</c> key names (<c>"Method": { "Name": "lora", "r": 16, ... }</c>).
/// <c>target_modules</c> is a JSON list (a module matches when its name equals an entry or ends with
/// "." + entry), a single string (a regex that must match the whole module name), or "all-linear".
/// </summary>
public sealed class LoraOptions : IValidatableOptions
{
    public const string AllLinear = "all-linear";

    /// <summary>PEFT's default targets for Llama models.</summary>
    public static readonly IReadOnlyList<string> DefaultTargetModules = ["q_proj", "v_proj"];

    [ConfigurationKeyName("r")] public int R { get; set; } = 8;
    [ConfigurationKeyName("lora_alpha")] public double LoraAlpha { get; set; } = 8;
    [ConfigurationKeyName("lora_dropout")] public double LoraDropout { get; set; }
    [ConfigurationKeyName("use_rslora")] public bool UseRsLora { get; set; }

    /// <summary>true / "default", "gaussian", "pissa", false.</summary>
    [ConfigurationKeyName("init_lora_weights")] public string InitLoraWeights { get; set; } = "true";

    /// <summary>The list form of target_modules (the string form is kept in <see cref="TargetModulesRegex"/>).</summary>
    [ConfigurationKeyName("target_modules"), SingleValueAllowed] public List<string>? TargetModules { get; set; }

    [ConfigurationKeyName("layers_to_transform"), SingleValueAllowed] public List<int>? LayersToTransform { get; set; }

    /// <summary>Module-name regex -> rank, matched as <c>(.*\.)?(key)$</c>; the first matching key wins.</summary>
    [ConfigurationKeyName("rank_pattern")] public Dictionary<string, int> RankPattern { get; set; } = new();

    /// <summary>Module-name regex -> alpha, matched like <see cref="RankPattern"/>.</summary>
    [ConfigurationKeyName("alpha_pattern")] public Dictionary<string, double> AlphaPattern { get; set; } = new();

    /// <summary>Only "none" is supported.</summary>
    [ConfigurationKeyName("bias")] public string Bias { get; set; } = "none";

    /// <summary>Only false is supported (Conv1D-style (in, out) weights do not occur in this framework).</summary>
    [ConfigurationKeyName("fan_in_fan_out")] public bool FanInFanOut { get; set; }

    /// <summary>The string form of target_modules (a regex, or "all-linear"); null when the list form is used.</summary>
    public string? TargetModulesRegex => _targetRegex;

    string? _targetRegex;

    /// <summary>Configuration path of this options' section ("" when read from adapter_config.json).</summary>
    internal string SourcePath { get; private set; } = "";

    public LoraInitialization Initialization => ParseInit(InitLoraWeights)
        ?? throw new PeftConfigurationException(Key("init_lora_weights"), InitLoraWeights, "must be true, false, \"default\", \"gaussian\" or \"pissa\"");

    /// <summary>target_modules as it would be written back to adapter_config.json (a list or a string).</summary>
    public JsonNode TargetModulesToJson() => _targetRegex is not null
        ? JsonValue.Create(_targetRegex)
        : new JsonArray(EffectiveTargetList.Select(t => (JsonNode?)JsonValue.Create(t)).ToArray());

    internal IReadOnlyList<string> EffectiveTargetList => TargetModules is { Count: > 0 } ? TargetModules : DefaultTargetModules;

    internal string TargetModulesDescription => _targetRegex is not null ? _targetRegex : "[" + string.Join(", ", EffectiveTargetList) + "]";

    internal string Key(string key) => SourcePath.Length == 0 ? key : $"{SourcePath}:{key}";

    /// <summary>Bind and validate a configuration section (its "name" key belongs to the caller).</summary>
    public static LoraOptions FromConfiguration(IConfiguration section)
    {
        var options = OptionsBinding.Bind<LoraOptions>(section, "name");
        options.SourcePath = section is IConfigurationSection s ? s.Path : "";
        // The binder ignores a scalar where the class has a list: the string form of target_modules and a
        // single integer layers_to_transform arrive here.
        var targets = section.GetSection("target_modules");
        if (targets.Value is { } pattern)
        {
            options._targetRegex = pattern;
            options.TargetModules = null;
        }
        var layers = section.GetSection("layers_to_transform");
        if (layers.Value is { Length: > 0 } single)
        {
            if (!int.TryParse(single, NumberStyles.Integer, CultureInfo.InvariantCulture, out var index))
                throw new PeftConfigurationException(layers.Path, single, "must be a layer index or a list of layer indices");
            options.LayersToTransform = [index];
        }
        options.CheckTargets();
        return options;
    }

    /// <summary>
    /// Read the LoRA fields of a PEFT <c>adapter_config.json</c>. Fields LoRA does not use are ignored; fields that
    /// would change the computation in a way this plugin does not implement are refused, naming the key.
    /// </summary>
    public static LoraOptions FromAdapterConfig(JsonObject config)
    {
        var o = new LoraOptions();
        o.R = ReadInt(config, "r") ?? o.R;
        o.LoraAlpha = ReadDouble(config, "lora_alpha") ?? o.LoraAlpha;
        o.LoraDropout = ReadDouble(config, "lora_dropout") ?? 0;
        o.UseRsLora = ReadBool(config, "use_rslora") ?? false;
        o.Bias = ReadString(config, "bias") ?? "none";
        o.FanInFanOut = ReadBool(config, "fan_in_fan_out") ?? false;
        o.InitLoraWeights = config["init_lora_weights"] switch
        {
            null => "true",
            JsonValue v when v.TryGetValue<bool>(out var b) => b ? "true" : "false",
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            var other => throw new PeftConfigurationException("init_lora_weights", other.ToJsonString(), "must be a boolean or a string"),
        };

        switch (config["target_modules"])
        {
            case null:
                throw new PeftConfigurationException("target_modules", null, "is missing (a list of module names or a regex)");
            case JsonValue v when v.TryGetValue<string>(out var s):
                o._targetRegex = s;
                break;
            case JsonArray a:
                o.TargetModules = a.Select(n => n is JsonValue e && e.TryGetValue<string>(out var name) ? name
                    : throw new PeftConfigurationException("target_modules", a.ToJsonString(), "entries must be strings")).ToList();
                break;
            case var other:
                throw new PeftConfigurationException("target_modules", other.ToJsonString(), "must be a list of module names or a regex string");
        }

        switch (config["layers_to_transform"])
        {
            case null:
                break;
            case JsonValue v when v.TryGetValue<int>(out var i):
                o.LayersToTransform = [i];
                break;
            case JsonArray a:
                o.LayersToTransform = a.Select(n => n is JsonValue e && e.TryGetValue<int>(out var i) ? i
                    : throw new PeftConfigurationException("layers_to_transform", a.ToJsonString(), "entries must be integers")).ToList();
                break;
            case var other:
                throw new PeftConfigurationException("layers_to_transform", other.ToJsonString(), "must be a layer index or a list of layer indices");
        }

        o.RankPattern = ReadPattern<int>(config, "rank_pattern", n => n.TryGetValue<int>(out var r) ? r : null);
        o.AlphaPattern = ReadPattern<double>(config, "alpha_pattern", n => n.TryGetValue<double>(out var a) ? a : null);

        // Features of PEFT's LoraConfig that change the computation and are not implemented here.
        RefuseIfSet(config, "layers_pattern", allowed: n => n is JsonValue v && v.TryGetValue<string>(out var s) && s == "layers"
                                                   || n is JsonArray a && a.Count == 1 && a[0] is JsonValue e && e.TryGetValue<string>(out var s1) && s1 == "layers");
        RefuseIfSet(config, "modules_to_save");
        RefuseIfSet(config, "layer_replication");
        RefuseIfSet(config, "exclude_modules");
        RefuseIfSet(config, "target_parameters");
        RefuseIfSet(config, "trainable_token_indices");
        RefuseIfSet(config, "alora_invocation_tokens");
        RefuseIfSet(config, "lora_bias", allowed: n => n is JsonValue v && v.TryGetValue<bool>(out var b) && !b);
        RefuseIfSet(config, "use_qalora", allowed: n => n is JsonValue v && v.TryGetValue<bool>(out var b) && !b);

        foreach (var (key, value, problem) in o.Validate())
            throw new PeftConfigurationException(key, FormatValue(value), problem);
        o.CheckTargets();
        return o;
    }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (R <= 0) yield return ("r", R, "must be a positive integer");
        if (!double.IsFinite(LoraAlpha)) yield return ("lora_alpha", LoraAlpha, "must be a finite number");
        if (!(LoraDropout >= 0 && LoraDropout < 1)) yield return ("lora_dropout", LoraDropout, "must be in [0, 1)");
        if (ParseInit(InitLoraWeights) is null)
        {
            var problem = InitLoraWeights.StartsWith("pissa_niter_", StringComparison.OrdinalIgnoreCase)
                ? "the randomized-SVD PiSSA variant is not supported; use \"pissa\" (exact SVD)"
                : "must be true, false, \"default\", \"gaussian\" or \"pissa\" (olora, loftq, eva, corda are not supported)";
            yield return ("init_lora_weights", InitLoraWeights, problem);
        }
        if (!string.Equals(Bias, "none", StringComparison.Ordinal))
            yield return ("bias", Bias, "only \"none\" is supported (trainable biases are not implemented)");
        if (FanInFanOut)
            yield return ("fan_in_fan_out", FanInFanOut, "only false is supported: this framework's linear layers store weights as (out, in)");
        if (TargetModules is not null && TargetModules.Any(string.IsNullOrWhiteSpace))
            yield return ("target_modules", "[" + string.Join(", ", TargetModules) + "]", "entries must be non-empty module names");
        if (LayersToTransform is not null && LayersToTransform.Any(i => i < 0))
            yield return ("layers_to_transform", "[" + string.Join(", ", LayersToTransform) + "]", "layer indices must be >= 0");
        foreach (var (pattern, rank) in RankPattern)
        {
            if (rank <= 0) yield return ($"rank_pattern:{pattern}", rank, "ranks must be positive integers");
            if (!IsValidRegex(pattern)) yield return ("rank_pattern", pattern, "is not a valid regular expression");
        }
        foreach (var (pattern, alpha) in AlphaPattern)
        {
            if (!double.IsFinite(alpha)) yield return ($"alpha_pattern:{pattern}", alpha, "alphas must be finite numbers");
            if (!IsValidRegex(pattern)) yield return ("alpha_pattern", pattern, "is not a valid regular expression");
        }
    }

    void CheckTargets()
    {
        if (_targetRegex is null) return;
        if (_targetRegex.Length == 0)
            throw new PeftConfigurationException(Key("target_modules"), _targetRegex, "must not be empty");
        if (_targetRegex != AllLinear && !IsValidRegex(_targetRegex))
            throw new PeftConfigurationException(Key("target_modules"), _targetRegex, "is not a valid regular expression (a single string is matched as a regex against the full module name)");
        // PEFT: "`layers_to_transform` cannot be used when `target_modules` is a str" (all-linear is expanded to a list first).
        if (_targetRegex != AllLinear && LayersToTransform is not null)
            throw new PeftConfigurationException(Key("layers_to_transform"), "[" + string.Join(", ", LayersToTransform) + "]",
                "cannot be used when target_modules is a regex string; use a list of module names");
    }

    internal static LoraInitialization? ParseInit(string value) => value.Trim().ToLowerInvariant() switch
    {
        "true" or "default" => LoraInitialization.Default,
        "false" => LoraInitialization.Random,
        "gaussian" => LoraInitialization.Gaussian,
        "pissa" => LoraInitialization.Pissa,
        _ => null,
    };

    /// <summary>init_lora_weights as PEFT writes it: a boolean for true/false, else the string.</summary>
    internal JsonNode InitLoraWeightsJson => Initialization switch
    {
        LoraInitialization.Default => JsonValue.Create(true),
        LoraInitialization.Random => JsonValue.Create(false),
        LoraInitialization.Gaussian => JsonValue.Create("gaussian"),
        _ => JsonValue.Create("pissa"),
    };

    static bool IsValidRegex(string pattern)
    {
        try { _ = new Regex(pattern, RegexOptions.CultureInvariant); return true; }
        catch (ArgumentException) { return false; }
    }

    static int? ReadInt(JsonObject config, string key) => config[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<int>(out var i) => i,
        JsonValue v when v.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue => (int)d,
        var other => throw new PeftConfigurationException(key, other.ToJsonString(), "must be an integer"),
    };

    static double? ReadDouble(JsonObject config, string key) => config[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) => d,
        var other => throw new PeftConfigurationException(key, other.ToJsonString(), "must be a number"),
    };

    static bool? ReadBool(JsonObject config, string key) => config[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        var other => throw new PeftConfigurationException(key, other.ToJsonString(), "must be true or false"),
    };

    static string? ReadString(JsonObject config, string key) => config[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw new PeftConfigurationException(key, other.ToJsonString(), "must be a string"),
    };

    static Dictionary<string, T> ReadPattern<T>(JsonObject config, string key, Func<JsonValue, T?> read) where T : struct
    {
        var result = new Dictionary<string, T>();
        switch (config[key])
        {
            case null:
                return result;
            case JsonObject o:
                foreach (var (pattern, node) in o)
                {
                    if (node is not JsonValue v || read(v) is not { } value)
                        throw new PeftConfigurationException($"{key}:{pattern}", node?.ToJsonString(), "must be a number");
                    result[pattern] = value;
                }
                return result;
            case var other:
                throw new PeftConfigurationException(key, other.ToJsonString(), "must be an object mapping module-name patterns to values");
        }
    }

    static void RefuseIfSet(JsonObject config, string key, Func<JsonNode, bool>? allowed = null)
    {
        var node = config[key];
        bool empty = node is null || node is JsonArray { Count: 0 } || node is JsonObject { Count: 0 };
        if (empty || (allowed?.Invoke(node!) ?? false)) return;
        throw new PeftConfigurationException(key, node!.ToJsonString(), "is not supported by the lora plugin");
    }

    static string? FormatValue(object? v) => v switch
    {
        null => null,
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString(),
    };
}
