using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Plugins.Lora;

namespace Peft.Plugins.Dora;

/// <summary>
/// DoRA (Liu et al. 2024) as in HF PEFT (<c>use_dora=True</c>): LoRA whose every wrapped layer carries a
/// <see cref="DoraVariant"/>. Targeting, options (r, lora_alpha, use_rslora, init_lora_weights, target_modules,
/// layers_to_transform, rank_pattern, alpha_pattern, lora_dropout), factors, adapter files and merge bookkeeping are
/// LoRA's (<see cref="LoraMethod.Attach(IPeftModel, string, LoraOptions, bool, ILoraVariantFactory?)"/>); this class
/// only picks the variant. Files: peft_type "LORA", use_dora true, plus <c>...lora_magnitude_vector</c> (out,).
/// </summary>
public sealed class DoraMethod : IPeftMethod
{
    public const string MethodName = "dora";

    readonly LoraMethod _lora = new();

    public string Name => MethodName;
    public string? PeftType => LoraMethod.LoraPeftType;
    public string Description => "DoRA: y = (m / ||W + s·BA||_row, detached) ⊙ (W + s·BA) x + bias, LoRA factors plus a magnitude m (out,) per layer (HF PEFT compatible)";

    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) =>
        _lora.Attach(model, adapterName, LoraOptions.FromConfiguration(options), initialize: true, DoraVariantFactory.For(model.Device));

    /// <summary>For a config with peft_type "LORA" and use_dora true; weights (A, B and the magnitude) are loaded afterwards.</summary>
    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig)
    {
        if (!LoraMethod.IsLoraConfig(adapterConfig) || !LoraMethod.UsesDora(adapterConfig)) return null;
        return _lora.Attach(model, adapterName, LoraOptions.FromAdapterConfig(adapterConfig), initialize: false, DoraVariantFactory.For(model.Device));
    }

    /// <summary>LoRA's r * (in + out) per targeted slot plus the magnitude's out; float32 weights and gradients.</summary>
    public MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        var o = LoraOptions.FromConfiguration(options);
        var byName = slots.ToDictionary(s => s.Name);
        long count = LoraTargetSelector.Select(o, slots).Sum(t =>
        {
            var slot = byName[t.ModuleName];
            return (long)t.Rank * (slot.InFeatures + slot.OutFeatures) + slot.OutFeatures;
        });
        return new MemoryEstimate(count, count * sizeof(float), count * sizeof(float), 0);
    }
}
