using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Lora;

/// <summary>
/// The variant seam of LoRA (HF PEFT's <c>LoraVariant</c>): how one adapter on a <see cref="LoraLinear"/> departs
/// from plain LoRA. The layer keeps everything the variants share (A (r, in), B (out, r), scaling, dropout,
/// enable/disable, merge bookkeeping, the safe-merge check) and so do <see cref="LoraMethod"/> (targeting, options)
/// and <see cref="LoraAdapter"/> (files, state dict, merge/unload); a variant only says how the adapter's forward,
/// merge and unmerge differ and which extra tensors it owns. DoRA is one (<c>plugins/Dora</c>); VeRA or a third
/// party's variant is another small subclass plus an <see cref="ILoraVariantFactory"/>.
/// <para>
/// A variant instance belongs to one adapter on one layer. It is a module: the layer registers it as
/// <c>&lt;ModuleKey&gt;.&lt;adapter&gt;</c> (DoRA: <c>lora_magnitude_vector.default</c>), so its parameters appear in
/// the layer's named parameters (<c>lora_magnitude_vector.default.weight</c>), move with the layer, and are freed
/// when the adapter is removed.
/// </para>
/// </summary>
public abstract class LoraVariant : nn.Module
{
    protected LoraVariant(string name) : base(name) { }

    /// <summary>Name of the layer's module dict this variant is registered in (PEFT's attribute name, e.g. <c>lora_magnitude_vector</c>).</summary>
    public abstract string ModuleKey { get; }

    /// <summary>
    /// The variant's tensors as HF PEFT saves them, keyed by the suffix after the module name
    /// (DoRA: <c>lora_magnitude_vector</c>, shape (out,)). They are trainable and saved with A and B.
    /// </summary>
    public abstract IReadOnlyList<(string PeftKey, Parameter Parameter)> StateTensors { get; }

    /// <summary>Called once, right after A and B got their initial values (zeros when weights are to be loaded).</summary>
    public abstract void Initialize(LoraLinear layer, string adapter);

    /// <summary>
    /// The layer's output with this adapter applied: <paramref name="result"/> is what the layer computed so far
    /// (the base output, bias included, plus any earlier adapters), in its own dtype; <paramref name="x"/> is the
    /// input already cast to the factors' dtype (float32), before dropout. Returns a tensor in result's dtype.
    /// </summary>
    public abstract Tensor Forward(LoraLinear layer, string adapter, Tensor x, Tensor result);

    /// <summary>
    /// The weight with the adapter folded in, from the base weight <paramref name="weight"/> (out, in) float32,
    /// as a new tensor. With <paramref name="keepForUnmerge"/> the variant stores what <see cref="Unmerge"/> needs.
    /// </summary>
    public abstract Tensor Merge(LoraLinear layer, string adapter, Tensor weight, bool keepForUnmerge);

    /// <summary>Undo <see cref="Merge"/> (called with keepForUnmerge): the base weight from the merged one, new tensor.</summary>
    public abstract Tensor Unmerge(LoraLinear layer, string adapter, Tensor mergedWeight);

    /// <summary>The layer wrote its base weight (merge, unmerge, PiSSA): drop anything cached from it.</summary>
    public virtual void BaseWeightChanged() { }
}

/// <summary>Creates the variant for each adapted layer of one adapter, and names it in configuration and files.</summary>
public interface ILoraVariantFactory
{
    /// <summary>The method name the adapter reports (<c>dora</c>).</summary>
    string MethodName { get; }

    /// <summary>A new variant for adapter <paramref name="adapter"/> on <paramref name="layer"/> (A and B already exist).</summary>
    LoraVariant Create(LoraLinear layer, string adapter);

    /// <summary>Mark the variant in adapter_config.json (DoRA: <c>use_dora: true</c>); the LoRA fields are already there.</summary>
    void WriteAdapterConfig(JsonObject config);
}

/// <summary>The variants of one kind on one layer, keyed by adapter name (registered as <c>&lt;ModuleKey&gt;.&lt;adapter&gt;</c>).</summary>
public sealed class LoraVariantDict : nn.Module
{
    internal LoraVariantDict() : base(nameof(LoraVariantDict)) { }

    public LoraVariant this[string adapter] => (LoraVariant)_internal_submodules[adapter];

    internal void Add(string adapter, LoraVariant variant) => register_module(adapter, variant);

    /// <summary>Unregister the adapter's variant and free its tensors.</summary>
    internal void Remove(string adapter)
    {
        var variant = this[adapter];
        _internal_submodules.Remove(adapter);
        variant.Dispose();
    }
}
