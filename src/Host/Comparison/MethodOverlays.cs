using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Cli;

namespace Peft.Host.Comparison;

/// <summary>
/// The one place that says what a method name in <c>peft compare --methods</c> means: the method-defining part of
/// <c>examples/&lt;name&gt;.json</c> (so a new combination is a new example file, not code). From the example are taken
/// <list type="bullet">
/// <item>the component sections <c>quantization</c>, <c>method</c>, <c>optimizer</c>, <c>hooks</c> (whole; absent = none);</item>
/// <item>the method-tuned training keys <see cref="TunedTrainingKeys"/> (learning rate, gradient clipping).</item>
/// </list>
/// Everything else — model, data, seed, batch size, steps, sequence length, evaluation — comes from the base
/// configuration, so every method sees the same data, seed and token budget. <c>lora</c> reads
/// <c>examples/quickstart.json</c> (<see cref="Aliases"/>); <c>full</c> reads <c>examples/full.json</c> and, when
/// there is none, is <c>"method": { "name": "full" }</c> with the base's learning rate.
/// Sweeps derive variants: <c>lora_r4</c> (LoRA with r = 4 and lora_alpha scaled to keep the example's alpha/r)
/// and <c>lisa_k2</c> (LISA with k = 2 active layers).
/// </summary>
public sealed class MethodOverlays(string examplesDirectory)
{
    public static readonly IReadOnlyList<string> ComponentSections = ["quantization", "method", "optimizer", "hooks"];
    public static readonly IReadOnlyList<string> TunedTrainingKeys = ["learning_rate", "max_grad_norm"];
    public static readonly IReadOnlyDictionary<string, string> Aliases = new Dictionary<string, string>(StringComparer.Ordinal) { ["lora"] = "quickstart" };

    public string ExamplesDirectory { get; } = examplesDirectory;

    /// <summary>The example file a method name reads.</summary>
    public string ExampleFile(string name) => Path.Combine(ExamplesDirectory, (Aliases.TryGetValue(name, out var a) ? a : name) + ".json");

    /// <summary>
    /// The overlay of <paramref name="name"/>: an object holding the component sections and a <c>training</c> object
    /// with the tuned keys. Null (and <paramref name="problem"/> set) when the method has no example.
    /// </summary>
    public JsonObject? Find(string name, out string? problem)
    {
        problem = null;
        if (SweepVariant(name) is { } sweep)
        {
            var baseOverlay = Find(sweep.Base, out problem);
            return baseOverlay is null ? null : sweep.Apply(baseOverlay, out problem);
        }
        var file = ExampleFile(name);
        if (!File.Exists(file))
        {
            if (name == Composition.FullFineTuning.Name) return new JsonObject { ["method"] = new JsonObject { ["name"] = "full" }, ["training"] = new JsonObject() };
            problem = $"no example configuration {file} (a method is compared from its examples/<name>.json)";
            return null;
        }
        JsonObject example;
        try { example = JsonNode.Parse(File.ReadAllText(file), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject ?? throw new JsonException("not a JSON object"); }
        catch (JsonException e) { problem = $"{file} is not a valid JSON configuration: {e.Message}"; return null; }
        var overlay = new JsonObject();
        foreach (var section in ComponentSections)
            if (example[section] is { } node) overlay[section] = node.DeepClone();
        var training = new JsonObject();
        if (example["training"] is JsonObject t)
            foreach (var key in TunedTrainingKeys)
                if (t[key] is { } v) training[key] = v.DeepClone();
        overlay["training"] = training;
        return overlay;
    }

    /// <summary>
    /// The base configuration with <paramref name="overlay"/> applied: the base's component sections are replaced,
    /// the tuned training keys set, <c>training:max_steps</c> set when <paramref name="steps"/> is given,
    /// <c>training:num_threads</c> = 1 unless the base sets it, and <c>output</c> = only <c>dir</c>.
    /// </summary>
    public static JsonObject Compose(JsonObject baseConfig, JsonObject overlay, int? steps, string outputDirectory)
    {
        var config = (JsonObject)baseConfig.DeepClone();
        foreach (var section in ComponentSections)
        {
            config.Remove(section);
            if (overlay[section] is { } node) config[section] = node.DeepClone();
        }
        if (config["training"] is not JsonObject training) config["training"] = training = new JsonObject();
        if (overlay["training"] is JsonObject tuned)
            foreach (var (key, value) in tuned) training[key] = value?.DeepClone();
        if (steps is { } n) training["max_steps"] = n;
        if (training["num_threads"] is null) training["num_threads"] = 1;
        config["output"] = new JsonObject { ["dir"] = outputDirectory };
        return config;
    }

    /// <summary>Parse a JSON configuration file (comments and trailing commas allowed), or a <see cref="CliException"/> naming it.</summary>
    public static JsonObject ReadConfig(string path, string option)
    {
        if (!File.Exists(path)) throw new CliException($"option '{option}': configuration file '{path}' does not exist");
        try
        {
            return JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject
                   ?? throw new CliException($"option '{option}': '{path}' is not a JSON object");
        }
        catch (JsonException e) { throw new CliException($"option '{option}': '{path}' is not valid JSON: {e.Message}"); }
    }

    /// <summary>A sweep name: <c>lora_r16</c> or <c>lisa_k2</c>.</summary>
    public static SweepVariant? SweepVariant(string name)
    {
        static int? Suffix(string name, string prefix) =>
            name.StartsWith(prefix, StringComparison.Ordinal) && int.TryParse(name.AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var v) && v > 0 ? v : null;
        if (Suffix(name, "lora_r") is { } r) return new SweepVariant("lora", "r", r);
        if (Suffix(name, "lisa_k") is { } k) return new SweepVariant("lisa", "k", k);
        return null;
    }
}

/// <summary>A sweep point: the base method's overlay with one option changed (LoRA's rank, LISA's k).</summary>
public sealed record SweepVariant(string Base, string Key, int Value)
{
    public JsonObject? Apply(JsonObject overlay, out string? problem)
    {
        problem = null;
        var o = (JsonObject)overlay.DeepClone();
        if (Key == "r")
        {
            if (o["method"] is not JsonObject method || method["r"] is null) { problem = $"the {Base} example has no method:r to sweep"; return null; }
            double r0 = method["r"]!.GetValue<double>();
            double alpha0 = method["lora_alpha"]?.GetValue<double>() ?? r0;
            method["r"] = Value;
            // keep the example's scaling alpha / r, so the sweep changes the rank only
            method["lora_alpha"] = alpha0 / r0 * Value;
            return o;
        }
        var hook = (o["hooks"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(h => h["name"]?.GetValue<string>() == "lisa");
        if (hook is null) { problem = $"the {Base} example has no lisa hook to sweep"; return null; }
        hook[Key] = Value;
        return o;
    }
}
