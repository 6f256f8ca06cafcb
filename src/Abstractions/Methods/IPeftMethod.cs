using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Model;

namespace Peft.Abstractions.Methods;

/// <summary>
/// A parameter-efficient fine-tuning method (LoRA, DoRA, ...). It wraps some of the model's linear layers
/// with trainable adapter layers. It composes with an <see cref="Quantization.IQuantizer"/> because it wraps
/// whatever <see cref="ILinearLayer"/> is in the slot (QLoRA + DoRA = nf4 quantizer, then DoRA), and with
/// <see cref="Training.ITrainingHook"/>s that toggle which of its parameters train (LISA + LoRA).
/// </summary>
public interface IPeftMethod
{
    /// <summary>Name used in configuration (<c>"Method": { "Name": "lora" }</c>), lower case, unique.</summary>
    string Name { get; }

    /// <summary>The <c>peft_type</c> written to <c>adapter_config.json</c> ("LORA"), or null if the method has no PEFT file format.</summary>
    string? PeftType { get; }

    string Description { get; }

    /// <summary>
    /// Attach a new adapter named <paramref name="adapterName"/> to the model using options from configuration
    /// (the section's keys are the method's; an unknown key or a bad value throws <see cref="PeftConfigurationException"/>).
    /// </summary>
    IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options);

    /// <summary>
    /// Attach an adapter described by a PEFT <c>adapter_config.json</c> (weights are loaded afterwards through
    /// <see cref="IAdapter.LoadStateDict"/>). Return null when <paramref name="adapterConfig"/> is not this method's.
    /// </summary>
    IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig);

    /// <summary>
    /// Memory of the trainable state this method adds, for planning (null if unknown). <paramref name="slots"/> are
    /// the model's linear slots (from a live model's <see cref="IPeftModel.LinearSlots"/> or from the host's layout
    /// of a config), so the method needs no knowledge of the architecture.
    /// </summary>
    MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options) => null;
}
