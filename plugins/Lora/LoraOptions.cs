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

    /// <summary>
    /// Keys of PEFT's <c>LoraConfig</c> that an <c>adapter_config.json</c> carries and that do not change what
    /// LoRA computes here: accepted and ignored when reading an adapter file (never accepted in configuration).
    /// <c>use_dora</c> is read by the host's choice of method (LoRA or DoRA), not by the options.
    /// </summary>
    public static readonly IReadOnlyList<string> IgnoredAdapterConfigKeys =
    [
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
        "use_dora", "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config", "runtime_config",
        "layers_pattern", "modules_to_save", "layer_replication", "exclude_modules", "target_parameters",
        "trainable_token_indices", "alora_invocation_tokens", "lora_bias", "use_qalora", "qalora_group_size",
    ];

    /// <summary>
    /// Of <see cref="IgnoredAdapterConfigKeys"/>, the PEFT features that would change the computation when set:
    /// an adapter file that sets one (to anything but its default) is refused naming the key.
    /// </summary>
    static readonly (string Key, Func<JsonNode, bool>? Allowed)[] RefusedWhenSet =
    [
        ("layers_pattern", n => n is JsonValue v && v.TryGetValue<string>(out var s) && s == "layers"
                                || n is JsonArray a && a.Count == 1 && a[0] is JsonValue e && e.TryGetValue<string>(out var s1) && s1 == "layers"),
        ("modules_to_save", null),
        ("layer_replication", null),
        ("exclude_modules", null),
        ("target_parameters", null),
        ("trainable_token_indices", null),
        ("alora_invocation_tokens", null),
        ("lora_bias", n => n is JsonValue v && v.TryGetValue<bool>(out var b) && !b),
        ("use_qalora", n => n is JsonValue v && v.TryGetValue<bool>(out var b) && !b),
    ];

    /// <summary>Bind and validate a configuration section (its "name" key belongs to the caller).</summary>
    public static LoraOptions FromConfiguration(IConfiguration section) => Bind(section, ["name"]);

    /// <summary>
    /// Read the LoRA fields of a PEFT <c>adapter_config.json</c> with the same binder as configuration
    /// (<see cref="OptionsBinding"/>): the JSON object becomes an <see cref="IConfiguration"/>, the keys in
    /// <see cref="IgnoredAdapterConfigKeys"/> are skipped, any other unknown key or bad value is refused naming the
    /// key. Features that would change the computation in a way this plugin does not implement are refused too.
    /// </summary>
    public static LoraOptions FromAdapterConfig(JsonObject config)
    {
        if (config["target_modules"] is null)
            throw new PeftConfigurationException("target_modules", null, "is missing (a list of module names or a regex)");
        foreach (var (key, allowed) in RefusedWhenSet)
        {
            var node = config[key];
            bool empty = node is null || node is JsonArray { Count: 0 } || node is JsonObject { Count: 0 };
            if (empty || (allowed?.Invoke(node!) ?? false)) continue;
            throw new PeftConfigurationException(key, node!.ToJsonString(), "is not supported by the lora plugin");
        }
        return Bind(JsonConfiguration.FromJsonObject(config), IgnoredAdapterConfigKeys.ToArray());
    }

    static LoraOptions Bind(IConfiguration section, string[] ignoredKeys)
    {
        var options = OptionsBinding.Bind<LoraOptions>(section, ignoredKeys);
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

    const string OutOfFloat32 = "is beyond float32's range (|alpha| <= 3.4e38): the adapter's scaling alpha/r multiplies float32 activations";

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (R <= 0) yield return ("r", R, "must be a positive integer");
        if (!double.IsFinite(LoraAlpha)) yield return ("lora_alpha", LoraAlpha, "must be a finite number");
        else if (Math.Abs(LoraAlpha) > float.MaxValue) yield return ("lora_alpha", LoraAlpha, OutOfFloat32);
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
            else if (Math.Abs(alpha) > float.MaxValue) yield return ($"alpha_pattern:{pattern}", alpha, OutOfFloat32);
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
}
