using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Plugins;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Composition;

/// <summary>
/// An HF model folder whose <c>config.json</c> carries a <c>quantization_config</c> (transformers' format, e.g.
/// bitsandbytes 4-bit) and whose weight files hold the quantized layers as they were saved (bitsandbytes:
/// <c>{m}.weight</c> packed uint8, <c>{m}.weight.absmax</c>, <c>{m}.weight.quant_map</c>, ...). Loading rebuilds
/// each quantized layer through the quantizer plugin that reads the config (<see cref="IQuantizedCheckpointReader"/>),
/// without re-quantizing; every other tensor loads like <see cref="HfModelFolder"/>.
/// </summary>
public static class QuantizedModelFolder
{
    public const string ConfigKey = "quantization_config";

    /// <summary>The folder's quantization_config, or null for a full-precision folder.</summary>
    public static JsonObject? ReadQuantizationConfig(string dir)
    {
        var path = Path.Combine(dir, HfModelFolder.ConfigFile);
        if (!File.Exists(path)) return null;
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path))?[ConfigKey]; }
        catch (Exception e) when (e is JsonException or InvalidOperationException) { return null; }   // HfModelFolder reports it
        if (node is null || node.GetValueKind() == JsonValueKind.Null) return null;
        return node as JsonObject ?? throw new PeftFormatException($"{path}: '{ConfigKey}' is not a JSON object");
    }

    /// <summary>The loaded quantizer that reads <paramref name="quantizationConfig"/>, or a one-line error naming what the folder asks for.</summary>
    public static (IQuantizer Quantizer, IQuantizedCheckpointReader Reader) ReaderFor(PluginCatalog catalog, JsonObject quantizationConfig, string source)
    {
        foreach (var q in catalog.Services.GetServices<IQuantizer>())
            if (q is IQuantizedCheckpointReader r && r.Reads(quantizationConfig)) return (q, r);
        var method = quantizationConfig["quant_method"]?.ToJsonString() ?? "(none)";
        throw new PeftFormatException($"{source}: {ConfigKey} (quant_method {method}) is not read by any loaded quantizer (loaded: {string.Join(", ", catalog.QuantizerNames)})");
    }

    /// <summary>
    /// The dtype the folder's full-precision parameters (float tensors named <c>….weight</c> or <c>….bias</c>: the
    /// embedding, norms, head, skipped slots; a quantized slot's codes are not floats and its statistics have longer
    /// names) are all stored in, or null when they differ. Eval and generate keep it, as for a plain folder.
    /// </summary>
    public static ScalarType? FullPrecisionDtype(string dir)
    {
        ScalarType? found = null;
        foreach (var (name, (_, info, _)) in Index(dir))
        {
            if (info.DType is not ("F32" or "F16" or "BF16") || !(name.EndsWith(".weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal))) continue;
            var t = Safetensors.ToScalarType(info.DType);
            if (found is { } f && f != t) return null;
            found = t;
        }
        return found;
    }

    /// <summary>Load a quantized folder, its full-precision tensors stored in <paramref name="storageDtype"/> (fp32 by default).</summary>
    public static LlamaForCausalLM Load(string dir, PluginCatalog catalog, ScalarType storageDtype = ScalarType.Float32)
    {
        var configPath = Path.Combine(dir, HfModelFolder.ConfigFile);
        var qc = ReadQuantizationConfig(dir) ?? throw new PeftFormatException($"{configPath}: no {ConfigKey} (not a quantized model folder)");
        var (_, reader) = ReaderFor(catalog, qc, configPath);
        var config = LlamaConfig.Load(configPath);
        config.OtherKeys.Remove(ConfigKey);   // the model in memory says what it holds; saving decides again
        var model = new LlamaForCausalLM(config, storageDtype, initialize: false);
        var index = Index(dir);   // headers only: each tensor is read when its turn comes
        var loaded = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            foreach (var slot in model.LinearSlots)
            {
                var prefix = slot.Name + ".";
                var own = index.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList();
                if (!reader.IsQuantizedSlot(own.Select(k => k[prefix.Length..]).ToList())) continue;
                // one slot's saved tensors at a time (codes and statistics), freed once the layer is built
                var bySuffix = new Dictionary<string, Tensor>(StringComparer.Ordinal);
                try
                {
                    foreach (var group in own.GroupBy(k => index[k].File))
                    {
                        var names = group.ToHashSet(StringComparer.Ordinal);
                        foreach (var (name, t) in Safetensors.Load(group.Key, names.Contains)) bySuffix[name[prefix.Length..]] = t;
                    }
                    var layer = reader.LoadQuantized(slot, bySuffix, qc);
                    var replaced = model.GetLinear(slot.Name);
                    model.SetLinear(slot.Name, layer);
                    replaced.Module.Dispose();
                    // the quantized layer read its own parameters (a bias: Qwen2's q/k/v, Llama 3 with attention_bias) from its tensors
                    foreach (var (name, _) in layer.Module.named_parameters()) loaded.Add(prefix + name);
                }
                finally
                {
                    foreach (var t in bySuffix.Values) t.Dispose();
                }
                foreach (var k in own) index.Remove(k);
            }

            // every other tensor: checked against the model, then read in chunks straight into its parameter
            var expected = model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
            var wanted = new List<(string Name, (string File, Safetensors.TensorInfo Info, long DataStart) At, Tensor Target)>();
            foreach (var (name, at) in index)
            {
                var (file, info, _) = at;
                if (HfModelFolder.IsIgnored(name)) continue;
                if (config.TieWordEmbeddings && name == LlamaForCausalLM.HeadName + ".weight") continue;
                if (!expected.TryGetValue(name, out var target))
                    throw new PeftFormatException($"{file}: unexpected tensor '{name}' (neither a parameter of LlamaForCausalLM nor part of a quantized layer)");
                HfModelFolder.CheckReadable(file, info, target);
                wanted.Add((name, at, target));
            }
            foreach (var group in wanted.GroupBy(w => w.At.File))
            {
                using var fs = new FileStream(group.Key, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
                foreach (var (name, (_, info, dataStart), target) in group)
                {
                    HfModelFolder.ReadInto(fs, dataStart, info, target);
                    loaded.Add(name);
                }
            }
            var missing = expected.Keys.Where(k => !loaded.Contains(k)).ToList();
            if (missing.Count > 0)
                throw new PeftFormatException($"{dir}: missing tensor '{missing[0]}'" + (missing.Count > 1 ? $" (and {missing.Count - 1} more)" : "") + " required by config.json");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Every tensor of the folder's weight files, by name: its file, header entry and data offset (no data read).</summary>
    static Dictionary<string, (string File, Safetensors.TensorInfo Info, long DataStart)> Index(string dir)
    {
        var files = new List<string>();
        var index = Path.Combine(dir, HfModelFolder.IndexFile);
        if (File.Exists(index))
        {
            try
            {
                var map = JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject ?? throw new JsonException("no \"weight_map\" object");
                foreach (var f in map.Select(kv => kv.Value?.GetValue<string>() ?? "").Distinct().Order(StringComparer.Ordinal))
                {
                    if (f.Length == 0 || f.Contains('/') || f.Contains('\\') || f.StartsWith('.'))
                        throw new PeftFormatException($"{index}: weight_map names '{f}', which is not a file in the folder");
                    files.Add(Path.Combine(dir, f));
                }
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            { throw new PeftFormatException($"{index}: not a valid safetensors index ({e.Message})"); }
        }
        else files.Add(Path.Combine(dir, HfModelFolder.WeightsFile));

        var all = new Dictionary<string, (string, Safetensors.TensorInfo, long)>(StringComparer.Ordinal);
        foreach (var file in files)
        {
            var (infos, _, dataStart) = Safetensors.ReadHeader(file);
            foreach (var info in infos)
                if (!all.TryAdd(info.Name, (file, info, dataStart)))
                    throw new PeftFormatException($"{file}: tensor '{info.Name}' appears in more than one file");
        }
        return all;
    }

    /// <summary>
    /// Write <paramref name="model"/> with its quantized slots as they are held (<see cref="IQuantizedLinear.CheckpointTensors"/>)
    /// and <paramref name="quantizationConfig"/> in config.json; every other tensor in the model's storage dtype. Atomic, like <see cref="HfModelFolder.Write"/>.
    /// </summary>
    public static void Save(LlamaForCausalLM model, string dir, JsonObject quantizationConfig, IReadOnlyList<string>? tokenizerFiles = null)
    {
        // Streamed like HfModelFolder.Save: full-precision tensors are made one at a time as the writer reaches them;
        // a quantized slot's saved tensors (codes and statistics, a few bits per weight) are made up front.
        var entries = HfModelFolder.StateEntries(model, model.StorageDtype);
        var held = new List<Tensor>();
        try
        {
            foreach (var slot in model.LinearSlots)
            {
                if (model.GetLinear(slot.Name) is not IQuantizedLinear q) continue;
                entries.RemoveAll(e => e.Name == slot.Name + ".weight" || e.Name == slot.Name + ".bias");
                foreach (var (suffix, t) in q.CheckpointTensors())
                {
                    held.Add(t);
                    entries.Add(new Safetensors.TensorEntry($"{slot.Name}.{suffix}", t.dtype, t.shape, () => t.detach()));
                }
            }
            var json = JsonNode.Parse(model.Config.ToJson(HfModelFolder.DtypeName(model.StorageDtype)))!.AsObject();
            json[ConfigKey] = quantizationConfig.DeepClone();
            var config = LlamaConfig.FromJson(json.ToJsonString(), Path.Combine(dir, HfModelFolder.ConfigFile));
            HfModelFolder.WriteStreamed(dir, config, HfModelFolder.DtypeName(model.StorageDtype), entries, tokenizerFiles: tokenizerFiles);
        }
        finally
        {
            foreach (var t in held) t.Dispose();
        }
    }

    /// <summary>Names of the linear slots a quantized model keeps in full precision (transformers' llm_int8_skip_modules).</summary>
    public static IReadOnlyList<string> FullPrecisionSlots(IPeftModel model) =>
        model.LinearSlots.Where(s => model.GetLinear(s.Name) is not IQuantizedLinear).Select(s => s.Name).ToList();

    /// <summary>
    /// Replace every quantized slot with a full-precision <see cref="BaseLinear"/> holding its dequantized weight
    /// (merge's default: dequantize, then add the adapter in fp32). The quantized layers are freed.
    /// </summary>
    public static void Dequantize(LlamaForCausalLM model)
    {
        foreach (var slot in model.LinearSlots)
        {
            if (model.GetLinear(slot.Name) is not IQuantizedLinear q) continue;
            var dense = new BaseLinear(slot.InFeatures, slot.OutFeatures, q.Bias is not null, model.StorageDtype, model.Device);
            using (var w = q.DenseWeight())
                dense.SetDenseWeight(w);
            if (q.Bias is { } b) dense.SetBias(b);
            model.SetLinear(slot.Name, dense);
            q.Module.Dispose();
        }
    }
}
