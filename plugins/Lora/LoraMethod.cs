using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;

namespace Peft.Plugins.Lora;

/// <summary>
/// LoRA (Hu et al. 2021) as in HF PEFT: wrap the targeted linear layers W (out, in) with trainable low-rank
/// factors so that y = W x + (alpha / r) * B A x, with A (r, in), B (out, r).
/// </summary>
public sealed class LoraMethod : IPeftMethod
{
    public const string MethodName = "lora";
    public const string LoraPeftType = "LORA";

    public string Name => MethodName;
    public string? PeftType => LoraPeftType;
    public string Description => "LoRA: trainable low-rank factors B (out, r) @ A (r, in) added to frozen linear layers (HF PEFT compatible)";

    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) =>
        Attach(model, adapterName, LoraOptions.FromConfiguration(options), initialize: true);

    /// <summary>
    /// For a config with peft_type "LORA" and use_dora false (DoRA shares peft_type "LORA"). The factors start at
    /// zero and PiSSA's residual is not recomputed: the weights come from the adapter file, and a PiSSA adapter
    /// expects the residual base model it was trained on (as in PEFT).
    /// </summary>
    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig)
    {
        if (!IsLoraConfig(adapterConfig) || UsesDora(adapterConfig)) return null;
        return Attach(model, adapterName, LoraOptions.FromAdapterConfig(adapterConfig), initialize: false);
    }

    /// <summary>peft_type is "LORA" (LoRA and its variants, e.g. DoRA, share it).</summary>
    public static bool IsLoraConfig(JsonObject adapterConfig) =>
        adapterConfig["peft_type"] is JsonValue t && t.TryGetValue<string>(out var type)
        && string.Equals(type, LoraPeftType, StringComparison.OrdinalIgnoreCase);

    /// <summary>use_dora is true.</summary>
    public static bool UsesDora(JsonObject adapterConfig) =>
        adapterConfig["use_dora"] is JsonValue d && d.TryGetValue<bool>(out var dora) && dora;

    /// <summary>
    /// Attach an adapter described by already-validated options; with <paramref name="variant"/>, every wrapped
    /// layer carries that LoRA variant (DoRA...). This is the one attach path plain LoRA and its variants share.
    /// </summary>
    public LoraAdapter Attach(IPeftModel model, string adapterName, LoraOptions options, bool initialize = true, ILoraVariantFactory? variant = null)
    {
        if (string.IsNullOrEmpty(adapterName) || adapterName.Contains('.') || adapterName.IndexOfAny(['/', '\\']) >= 0)
            throw new PeftConfigurationException("adapter name", adapterName, "must be non-empty and contain no '.', '/' or '\\'");
        foreach (var name in model.LinearLayerNames)
            if (model.GetLinear(name) is LoraLinear existing && existing.HasAdapter(adapterName))
                throw new InvalidOperationException($"the model already has a LoRA adapter named '{adapterName}' (on '{name}')");

        var slots = model.LinearSlots;
        var targets = LoraTargetSelector.Select(options, slots);
        var init = options.Initialization;
        var layers = new List<(string, LoraLinear)>(targets.Count);
        var created = new List<(string Module, LoraLinear Layer, ILinearLayer Original)>();
        try
        {
            foreach (var target in targets)
            {
                var slot = model.GetLinear(target.ModuleName);
                var lora = slot as LoraLinear;
                if (lora is null)
                {
                    lora = new LoraLinear(target.ModuleName, slot);
                    created.Add((target.ModuleName, lora, slot));
                    model.SetLinear(target.ModuleName, lora);
                }
                lora.AddAdapter(adapterName, target.Rank, target.Alpha, options.LoraDropout, options.UseRsLora, init, initialize, variant);
                layers.Add((target.ModuleName, lora));
            }
        }
        catch (Exception e)
        {
            foreach (var (_, layer) in layers)
            {
                if (initialize && init == LoraInitialization.Pissa) layer.FoldIntoBase(adapterName);
                layer.RemoveAdapter(adapterName);
            }
            foreach (var (module, layer, original) in created)
            {
                model.SetLinear(module, original);
                layer.ReleaseBaseLayer();
                layer.Dispose();
            }
            if (e is ArgumentOutOfRangeException or InvalidOperationException && init == LoraInitialization.Pissa)
                throw new PeftConfigurationException(options.Key("init_lora_weights"), "pissa", e.Message);
            throw;
        }
        var expanded = options.TargetModulesRegex == LoraOptions.AllLinear
            ? LoraTargetSelector.ResolveTargetList(options, slots)
            : null;
        return new LoraAdapter(adapterName, model, options, layers, expanded, variant);
    }

    /// <summary>
    /// Trainable parameters r * (in + out) per targeted slot, float32 weights and gradients. Optimizer state is left
    /// to the optimizer strategy's own estimate.
    /// </summary>
    public MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        var o = LoraOptions.FromConfiguration(options);
        var byName = slots.ToDictionary(s => s.Name);
        var targets = LoraTargetSelector.Select(o, slots);
        long count = targets.Sum(t => (long)t.Rank * (byName[t.ModuleName].InFeatures + byName[t.ModuleName].OutFeatures));
        return new MemoryEstimate(count, count * sizeof(float), count * sizeof(float), 0);
    }
}
