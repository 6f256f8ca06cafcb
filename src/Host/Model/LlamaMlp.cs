using Peft.Abstractions.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The SwiGLU feed-forward block (Shazeer 2020) of Llama: x (B, T, D) ->
/// down_proj( silu(gate_proj(x)) * up_proj(x) ) (B, T, D), the inner width being intermediate_size.
/// gate_proj, up_proj and down_proj are replaceable linear slots.
/// </summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>, ILinearSlotOwner
{
    static readonly string[] SlotNames = ["gate_proj", "up_proj", "down_proj"];
    readonly Dictionary<string, ILinearLayer> _slots = new(StringComparer.Ordinal);

    public LlamaMlp(LlamaConfig config, ScalarType storageDtype, Device device) : base(nameof(LlamaMlp))
    {
        long d = config.HiddenSize, inner = config.IntermediateSize;
        bool bias = config.MlpBias;
        _slots["gate_proj"] = new BaseLinear(d, inner, bias, storageDtype, device);
        _slots["up_proj"] = new BaseLinear(d, inner, bias, storageDtype, device);
        _slots["down_proj"] = new BaseLinear(inner, d, bias, storageDtype, device);
        RegisterSlots();
        RegisterComponents();
    }

    public ILinearLayer GetSlot(string slot) =>
        _slots.TryGetValue(slot, out var layer) ? layer : throw new KeyNotFoundException($"mlp has no linear slot '{slot}'");

    public void SetSlot(string slot, ILinearLayer layer)
    {
        LinearSlotChecks.CheckReplacement(slot, GetSlot(slot), layer);
        _slots[slot] = layer;
        RegisterSlots();
    }

    void RegisterSlots()
    {
        ClearModules();
        foreach (var name in SlotNames) register_module(name, _slots[name].Module);
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var gate = _slots["gate_proj"].Module.call(x);                     // (B, T, inner), before silu
        var up = _slots["up_proj"].Module.call(x);                         // (B, T, inner)
        var h = SwiGlu.Apply(gate, up);                                    // silu(gate) * up, keeping gate and up only
        return _slots["down_proj"].Module.call(h).MoveToOuterDisposeScope();
    }
}
