using System.Globalization;
using System.Text.Json.Nodes;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Lora;

/// <summary>
/// One named LoRA adapter (or LoRA-variant adapter, e.g. DoRA) on a model: the <see cref="LoraLinear"/> layers
/// that carry it, its options, and its two names for each tensor (see <see cref="IAdapter"/>):
/// <list type="bullet">
/// <item>parameter names, as the model's NamedParameters gives them: <c>model.layers.0.self_attn.q_proj.lora_A.default.weight</c>
/// (r, in), <c>...lora_B.default.weight</c> (out, r), a variant's <c>...lora_magnitude_vector.default.weight</c>;</item>
/// <item>PEFT file keys (state dict): the same without the adapter name, <c>...q_proj.lora_A.weight</c>,
/// <c>...q_proj.lora_B.weight</c>, and the variant's own keys (<c>...q_proj.lora_magnitude_vector</c>).</item>
/// </list>
/// </summary>
public sealed class LoraAdapter : IAdapter
{
    public const string LoraAKey = ".lora_A.weight";
    public const string LoraBKey = ".lora_B.weight";

    readonly ILoraVariantFactory? _variant;

    readonly IPeftModel _model;
    readonly List<(string Module, LoraLinear Layer)> _layers;
    bool _enabled = true;
    bool _removed;

    internal LoraAdapter(string name, IPeftModel model, LoraOptions options, IReadOnlyList<(string Module, LoraLinear Layer)> layers, IReadOnlyList<string>? expandedTargets,
        ILoraVariantFactory? variant = null)
    {
        _variant = variant;
        Name = name;
        _model = model;
        Options = options;
        _layers = layers.ToList();
        ExpandedTargetModules = expandedTargets;
    }

    public string Name { get; }
    public string MethodName => _variant?.MethodName ?? LoraMethod.MethodName;
    public LoraOptions Options { get; }

    /// <summary>For "all-linear": the module-name list it stood for (written to adapter_config.json as PEFT does).</summary>
    public IReadOnlyList<string>? ExpandedTargetModules { get; }

    public IReadOnlyList<string> TargetModules => _layers.Select(l => l.Module).ToList();

    /// <summary>The layer that carries this adapter in slot <paramref name="module"/>.</summary>
    public LoraLinear Layer(string module) => _layers.First(l => l.Module == module).Layer;

    /// <summary>Named as the model names them: <c>&lt;module&gt;.lora_A.&lt;adapter&gt;.weight</c>, <c>.lora_B.</c>, a variant's <c>&lt;module&gt;.&lt;ModuleKey&gt;.&lt;adapter&gt;.&lt;name&gt;</c>.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters
    {
        get
        {
            CheckAlive();
            var list = new List<(string, Parameter)>(_layers.Count * 3);
            foreach (var (module, layer) in _layers)
            {
                list.Add(($"{module}.lora_A.{Name}.weight", layer.LoraA(Name)));
                list.Add(($"{module}.lora_B.{Name}.weight", layer.LoraB(Name)));
                if (layer.Variant(Name) is { } variant)
                    foreach (var (path, p) in variant.named_parameters())
                        list.Add(($"{module}.{variant.ModuleKey}.{Name}.{path}", p));
            }
            return list;
        }
    }

    /// <summary>PEFT file keys (no adapter name): <c>&lt;module&gt;.lora_A.weight</c>, <c>&lt;module&gt;.lora_B.weight</c>, a variant's <c>&lt;module&gt;.&lt;PeftKey&gt;</c>.</summary>
    public IReadOnlyDictionary<string, Tensor> GetStateDict()
    {
        CheckAlive();
        var dict = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (module, layer) in _layers)
        {
            dict[module + LoraAKey] = layer.LoraA(Name);
            dict[module + LoraBKey] = layer.LoraB(Name);
            if (layer.Variant(Name) is { } variant)
                foreach (var (key, p) in variant.StateTensors) dict[$"{module}.{key}"] = p;
        }
        return dict;
    }

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors)
    {
        CheckAlive();
        var expected = GetStateDict();
        foreach (var (key, tensor) in tensors)
        {
            if (!expected.TryGetValue(key, out var target))
                throw new InvalidDataException($"tensor '{key}' matches no tensor of {MethodName} adapter '{Name}' (it wraps {_layers.Count} modules, e.g. '{_layers[0].Module}')");
            if (!target.shape.SequenceEqual(tensor.shape))
                throw new InvalidDataException($"tensor '{key}' has shape [{string.Join(", ", tensor.shape)}] but the adapter's parameter has shape [{string.Join(", ", target.shape)}]");
        }
        var missing = expected.Keys.Where(k => !tensors.ContainsKey(k)).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"tensor '{missing[0]}' is missing ({missing.Count} of the adapter's {expected.Count} tensors are missing)");
        using var _ = torch.no_grad();
        foreach (var (key, tensor) in tensors) expected[key].copy_(tensor);
    }

    /// <summary>The LoRA fields of adapter_config.json (the host adds base_model_name_or_path etc., sorts and writes).</summary>
    public JsonObject ToAdapterConfig()
    {
        var o = Options;
        JsonNode targets = ExpandedTargetModules is not null
            ? new JsonArray(ExpandedTargetModules.Select(t => (JsonNode?)JsonValue.Create(t)).ToArray())
            : o.TargetModulesToJson();
        var rankPattern = new JsonObject();
        foreach (var (k, v) in o.RankPattern) rankPattern[k] = v;
        var alphaPattern = new JsonObject();
        foreach (var (k, v) in o.AlphaPattern) alphaPattern[k] = Number(v);
        var config = new JsonObject
        {
            ["peft_type"] = LoraMethod.LoraPeftType,
            ["task_type"] = "CAUSAL_LM",
            ["r"] = o.R,
            ["lora_alpha"] = Number(o.LoraAlpha),
            ["lora_dropout"] = PythonFloat(o.LoraDropout),
            ["use_rslora"] = o.UseRsLora,
            ["use_dora"] = false,
            ["fan_in_fan_out"] = o.FanInFanOut,
            ["bias"] = o.Bias,
            ["target_modules"] = targets,
            ["layers_to_transform"] = o.LayersToTransform is null ? null : new JsonArray(o.LayersToTransform.Select(i => (JsonNode?)i).ToArray()),
            ["rank_pattern"] = rankPattern,
            ["alpha_pattern"] = alphaPattern,
            ["modules_to_save"] = null,
            ["init_lora_weights"] = o.InitLoraWeightsJson,
        };
        _variant?.WriteAdapterConfig(config);
        return config;
    }

    public bool Enabled
    {
        get => _enabled;
        set
        {
            CheckAlive();
            foreach (var (_, layer) in _layers) layer.SetEnabled(Name, value);
            _enabled = value;
        }
    }

    public bool Merged => !_removed && _layers.Count > 0 && _layers.All(l => l.Layer.IsMerged(Name));

    /// <summary>
    /// W += scaling * B @ A in every wrapped layer. With <paramref name="safe"/>, a layer whose result would not be
    /// finite throws (naming the module) and the layers merged by this call are unmerged again.
    /// </summary>
    public void Merge(bool safe = true)
    {
        CheckAlive();
        var done = new List<LoraLinear>();
        try
        {
            foreach (var (_, layer) in _layers)
            {
                if (layer.IsMerged(Name)) continue;
                layer.Merge(Name, safe);
                done.Add(layer);
            }
        }
        catch
        {
            for (int i = done.Count - 1; i >= 0; i--) done[i].Unmerge(Name);
            throw;
        }
    }

    /// <summary>W -= scaling * B @ A, layers in reverse order.</summary>
    public void Unmerge()
    {
        CheckAlive();
        for (int i = _layers.Count - 1; i >= 0; i--) _layers[i].Layer.Unmerge(Name);
    }

    /// <summary>
    /// Delete the adapter from every layer (unmerging first). A layer left without adapters is replaced in its
    /// slot by the original base layer and disposed.
    /// </summary>
    public void MergeAndUnload(bool safe = true)
    {
        CheckAlive();
        Merge(safe);
        // The deltas now live in the base weights: drop the wrappers without subtracting them again.
        foreach (var (_, layer) in _layers) layer.KeepMerged(Name);
        Remove();
    }

    public void Remove()
    {
        if (_removed) return;
        foreach (var (module, layer) in _layers)
        {
            if (layer.RemoveAdapter(Name) > 0) continue;
            if (!ReferenceEquals(_model.GetLinear(module), layer))
                throw new InvalidOperationException($"cannot restore '{module}': its slot no longer holds the LoRA layer (it holds {_model.GetLinear(module).GetType().Name}); remove the outer wrapper first");
            var original = layer.ReleaseBaseLayer();
            _model.SetLinear(module, original);
            layer.Dispose();
        }
        _removed = true;
    }

    void CheckAlive()
    {
        if (_removed) throw new InvalidOperationException($"LoRA adapter '{Name}' was removed");
    }

    static JsonNode Number(double v) =>
        v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);

    /// <summary>A float written the way Python's json does (0.0, not 0).</summary>
    static JsonNode PythonFloat(double v) =>
        v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonNode.Parse(((long)v).ToString(CultureInfo.InvariantCulture) + ".0")! : JsonValue.Create(v);
}
