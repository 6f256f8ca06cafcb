using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Peft.Plugins.Lora;

/// <summary>
/// One LoRA factor of one adapter: a bias-free weight, so parameter names read <c>lora_A.default.weight</c>
/// like HF PEFT's <c>nn.Linear</c> factors. Read <see cref="Weight"/> each time: moving the module to another
/// device or dtype replaces the Parameter object.
/// </summary>
public sealed class LoraFactor : nn.Module
{
    [ComponentName(Name = "weight")]
    Parameter _weight;

    internal LoraFactor(Tensor weight) : base(nameof(LoraFactor))
    {
        _weight = new Parameter(weight, requires_grad: true);
        RegisterComponents();
    }

    public Parameter Weight => _weight;
}

/// <summary>
/// The per-adapter factors of one kind (<c>lora_A</c> or <c>lora_B</c>) of one layer, keyed by adapter name.
/// Unlike TorchSharp's ModuleDict it registers and unregisters entries as adapters come and go.
/// </summary>
public sealed class LoraFactorDict : nn.Module
{
    internal LoraFactorDict() : base(nameof(LoraFactorDict)) { }

    public LoraFactor this[string adapter] => (LoraFactor)_internal_submodules[adapter];

    public bool Contains(string adapter) => _internal_submodules.ContainsKey(adapter);

    internal void Add(string adapter, LoraFactor factor) => register_module(adapter, factor);

    /// <summary>Unregister the adapter's factor and free its tensor.</summary>
    internal void Remove(string adapter)
    {
        var factor = this[adapter];
        _internal_submodules.Remove(adapter);
        factor.Dispose();
    }
}
