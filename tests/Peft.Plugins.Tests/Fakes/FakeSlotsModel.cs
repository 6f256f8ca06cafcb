using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Fakes;

/// <summary>
/// A model made of the given slots only (any naming, any layout), with random dense layers. Its
/// <see cref="LayerIndexOf"/> refuses to answer, so a plugin that parses names instead of reading
/// <see cref="LinearSlot"/>s fails against it.
/// </summary>
public sealed class FakeSlotsModel(ModelShape shape, IReadOnlyList<LinearSlot> slots) : IPeftModel
{
    readonly Dictionary<string, ILinearLayer> _layers = slots.ToDictionary(s => s.Name, s => (ILinearLayer)TestLinear.Random(s.InFeatures, s.OutFeatures));

    public ModelShape Shape { get; } = shape;
    public IReadOnlyList<LinearSlot> LinearSlots { get; } = slots;
    public string OutputHeadName => slots.FirstOrDefault(s => s.Kind == LinearKind.OutputHead)?.Name ?? "";
    public ILinearLayer GetLinear(string name) => _layers[name];
    public void SetLinear(string name, ILinearLayer layer) => _layers[name] = layer;
    public int? LayerIndexOf(string name) => throw new InvalidOperationException("plugins read LinearSlot.LayerIndex, not names");
    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters()
    {
        foreach (var s in slots)
            foreach (var (p, param) in _layers[s.Name].Module.named_parameters())
                yield return ($"{s.Name}.{p}", param);
    }
    public Device Device => torch.CPU;
}
