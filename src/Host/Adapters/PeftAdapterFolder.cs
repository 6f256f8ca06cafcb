using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Host.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Adapters;

/// <summary>
/// The HF PEFT adapter folder: <c>adapter_config.json</c> (keys sorted, indent 2) and
/// <c>adapter_model.safetensors</c> (metadata {"format": "pt"}, tensor keys prefixed <c>base_model.model.</c>
/// and free of the adapter name: <c>base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight</c>).
/// A non-default adapter is saved in a sub-folder named after it, as PEFT's save_pretrained does.
/// Only JSON and safetensors are read.
/// </summary>
public static class PeftAdapterFolder
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    public const string DefaultAdapterName = "default";
    public const string KeyPrefix = "base_model.model.";

    /// <summary>The PEFT release whose adapter format this writer follows (written as peft_version).</summary>
    public const string PeftFormatVersion = "0.12.0";

    static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        IndentSize = 2,
        // Keep regexes such as "q_proj|v_proj" or "(.*\.)?" readable: no \u escapes for ASCII symbols.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Where an adapter named <paramref name="adapterName"/> is saved: the folder itself for "default", else a sub-folder.</summary>
    public static string AdapterDirectory(string dir, string adapterName)
    {
        if (string.IsNullOrEmpty(adapterName) || adapterName is "." or ".." || adapterName.IndexOfAny(['/', '\\', ':']) >= 0)
            throw new ArgumentException($"adapter name '{adapterName}' cannot be used as a folder name", nameof(adapterName));
        return adapterName == DefaultAdapterName ? dir : Path.Combine(dir, adapterName);
    }

    /// <summary>
    /// Save <paramref name="adapter"/> under <paramref name="dir"/> (or <c>dir/&lt;name&gt;</c>). The tensors are
    /// written in <paramref name="dtype"/> (float32 by default). A new folder appears complete or not at all; in an
    /// existing folder both files are first written under temporary names and then renamed into place, so other
    /// content (sub-folders of other adapters) is kept. Returns the folder written.
    /// </summary>
    public static string Save(IAdapter adapter, string dir, string? baseModelNameOrPath, ScalarType dtype = ScalarType.Float32)
    {
        if (!IsFloat(dtype))
            throw new ArgumentException($"adapter tensors must be saved in a floating-point dtype, not {dtype}", nameof(dtype));
        var target = Path.GetFullPath(AdapterDirectory(dir, adapter.Name));
        var configJson = ToSortedJson(BuildConfig(adapter, baseModelNameOrPath));

        using var scope = torch.NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (key, tensor) in adapter.GetStateDict())
            tensors[KeyPrefix + key] = tensor.dtype == dtype ? tensor.detach() : tensor.detach().to(dtype);
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };

        if (!Directory.Exists(target))
        {
            AtomicFile.WriteDirectory(target, tmp =>
            {
                Safetensors.Save(Path.Combine(tmp, WeightsFileName), tensors, metadata);
                File.WriteAllText(Path.Combine(tmp, ConfigFileName), configJson);
            });
            return target;
        }

        var suffix = $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        var weightsTmp = Path.Combine(target, WeightsFileName + suffix);
        var configTmp = Path.Combine(target, ConfigFileName + suffix);
        try
        {
            Safetensors.Save(weightsTmp, tensors, metadata);
            AtomicFile.WriteText(configTmp, configJson);
            File.Move(weightsTmp, Path.Combine(target, WeightsFileName), overwrite: true);
            File.Move(configTmp, Path.Combine(target, ConfigFileName), overwrite: true);
        }
        finally
        {
            if (File.Exists(weightsTmp)) File.Delete(weightsTmp);
            if (File.Exists(configTmp)) File.Delete(configTmp);
        }
        return target;
    }

    /// <summary>
    /// adapter_config.json's body: the method's fields (<see cref="IAdapter.ToAdapterConfig"/>) plus
    /// base_model_name_or_path, inference_mode, peft_version and (if the method gave none) task_type.
    /// </summary>
    public static JsonObject BuildConfig(IAdapter adapter, string? baseModelNameOrPath)
    {
        var config = (JsonObject)adapter.ToAdapterConfig().DeepClone();
        if (config["peft_type"] is null)
            throw new InvalidOperationException($"method '{adapter.MethodName}' gave no peft_type; it has no PEFT file format");
        config["base_model_name_or_path"] = baseModelNameOrPath;
        config["inference_mode"] = true;
        config["peft_version"] = PeftFormatVersion;
        if (!config.ContainsKey("task_type")) config["task_type"] = "CAUSAL_LM";
        return config;
    }

    /// <summary>JSON with every object's keys sorted (ordinal, like Python's sort_keys) and 2-space indentation.</summary>
    public static string ToSortedJson(JsonNode node) => Sorted(node)?.ToJsonString(JsonOptions) ?? "null";

    static JsonNode? Sorted(JsonNode? node) => node switch
    {
        JsonObject o => new JsonObject(o.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => KeyValuePair.Create(kv.Key, Sorted(kv.Value)))),
        JsonArray a => new JsonArray(a.Select(Sorted).ToArray()),
        null => null,
        _ => node.DeepClone(),
    };

    /// <summary>
    /// Read <c>adapter_config.json</c> of the adapter folder <paramref name="dir"/>; for a non-default
    /// <paramref name="adapterName"/>, of <c>dir/&lt;name&gt;</c> when that exists (where <see cref="Save"/> puts it).
    /// Returns the config and the folder it was found in.
    /// </summary>
    public static (JsonObject Config, string Folder) ReadConfig(string dir, string adapterName = DefaultAdapterName)
    {
        var folder = Path.GetFullPath(dir);
        if (!Directory.Exists(folder)) throw new PeftFormatException($"{folder}: adapter folder not found");
        var named = Path.GetFullPath(AdapterDirectory(dir, adapterName));
        if (adapterName != DefaultAdapterName && File.Exists(Path.Combine(named, ConfigFileName)))
            folder = named;
        var path = Path.Combine(folder, ConfigFileName);
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: file not found (an adapter folder needs {ConfigFileName} and {WeightsFileName})");
        try
        {
            return (JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException($"{path}: not a JSON object"), folder);
        }
        catch (JsonException e)
        {
            throw new PeftFormatException($"{path}: not valid JSON ({e.Message})");
        }
    }

    /// <summary>
    /// Load an adapter folder into <paramref name="model"/> as <paramref name="adapterName"/>: read
    /// adapter_config.json, attach through the first of <paramref name="methods"/> whose PeftType equals its
    /// peft_type and that accepts it, then copy the tensors of adapter_model.safetensors in (prefix stripped, any
    /// float dtype converted). A tensor that matches no module, a wrong shape or a missing tensor throws
    /// <see cref="PeftFormatException"/> naming the key (and both shapes); the model is then left as it was.
    /// </summary>
    public static IAdapter Load(string dir, IPeftModel model, IEnumerable<IPeftMethod> methods, string adapterName = DefaultAdapterName)
    {
        var (config, folder) = ReadConfig(dir, adapterName);
        var configPath = Path.Combine(folder, ConfigFileName);
        var weightsPath = Path.Combine(folder, WeightsFileName);
        if (config["peft_type"] is not JsonValue pt || !pt.TryGetValue<string>(out var peftType))
            throw new PeftFormatException($"{configPath}: 'peft_type' is missing or not a string");
        if (!File.Exists(weightsPath))
            throw new PeftFormatException($"{weightsPath}: file not found");

        var candidates = methods.Where(m => string.Equals(m.PeftType, peftType, StringComparison.OrdinalIgnoreCase)).ToList();
        IAdapter? adapter = null;
        try
        {
            foreach (var method in candidates)
            {
                adapter = method.AttachFromAdapterConfig(model, adapterName, config);
                if (adapter is not null) break;
            }
        }
        catch (PeftConfigurationException e)
        {
            throw new PeftFormatException($"{configPath}: {e.Message}");
        }
        if (adapter is null)
        {
            var known = string.Join(", ", methods.Where(m => m.PeftType is not null).Select(m => $"{m.Name} ({m.PeftType})"));
            var dora = config["use_dora"] is JsonValue d && d.TryGetValue<bool>(out var useDora) && useDora ? " with use_dora true" : "";
            throw new PeftFormatException($"{configPath}: no loaded method reads peft_type '{peftType}'{dora} (methods with a PEFT format: {(known.Length == 0 ? "none" : known)})");
        }

        try
        {
            var tensors = Safetensors.Load(weightsPath);
            try
            {
                var stripped = StripAndCheck(weightsPath, tensors, adapter);
                adapter.LoadStateDict(stripped);
            }
            finally
            {
                foreach (var t in tensors.Values) t.Dispose();
            }
        }
        catch (Exception e)
        {
            adapter.Remove();
            if (e is InvalidDataException or ArgumentException) throw new PeftFormatException($"{weightsPath}: {e.Message}");
            throw;
        }
        return adapter;
    }

    /// <summary>Strip the <c>base_model.model.</c> prefix and check every key and shape against the adapter's parameters.</summary>
    static Dictionary<string, Tensor> StripAndCheck(string path, IReadOnlyDictionary<string, Tensor> tensors, IAdapter adapter)
    {
        var expected = adapter.GetStateDict();
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (key, tensor) in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!key.StartsWith(KeyPrefix, StringComparison.Ordinal))
                throw new PeftFormatException($"{path}: tensor '{key}' does not start with '{KeyPrefix}' (not a PEFT adapter key)");
            var name = key[KeyPrefix.Length..];
            if (!expected.TryGetValue(name, out var target))
                throw new PeftFormatException($"{path}: tensor '{key}' matches no module the adapter wraps (adapter_config.json's target_modules select {adapter.TargetModules.Count} modules, e.g. '{adapter.TargetModules.FirstOrDefault()}')");
            if (!target.shape.SequenceEqual(tensor.shape))
                throw new PeftFormatException($"{path}: tensor '{key}' has shape [{string.Join(", ", tensor.shape)}] but the model needs [{string.Join(", ", target.shape)}]");
            if (!IsFloat(tensor.dtype))
                throw new PeftFormatException($"{path}: tensor '{key}' has dtype {tensor.dtype}; adapter weights must be floating point");
            result[name] = tensor;
        }
        var missing = expected.Keys.Where(k => !result.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        if (missing.Count > 0)
            throw new PeftFormatException($"{path}: tensor '{KeyPrefix}{missing[0]}' is missing ({missing.Count} of {expected.Count} expected tensors are absent)");
        return result;
    }

    static bool IsFloat(ScalarType t) => t is ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64;
}
