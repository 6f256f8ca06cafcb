using System.Text.Json.Nodes;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MyMethod;

/// <summary>
/// One named adapter of the method on a model. Names (see <see cref="IAdapter"/>): the parameter of module M is
/// <c>M.mymethod_g.&lt;adapter&gt;</c> in the model and <c>M.mymethod_g</c> in the adapter file (the host adds
/// HF PEFT's <c>base_model.model.</c> prefix).
/// </summary>
public sealed class MyMethodAdapter(MyMethodMethod method, IPeftModel model, string name, List<(string Module, MyMethodLinear Layer)> layers) : IAdapter
{
    public const string KeySuffix = ".mymethod_g";

    bool _enabled = true;

    public string Name { get; } = name;
    public string MethodName => method.Name;
    public IReadOnlyList<string> TargetModules => layers.Select(l => l.Module).ToList();

    public IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters =>
        layers.Select(l => ($"{l.Module}{KeySuffix}.{Name}", l.Layer.Scale(Name))).ToList();

    public IReadOnlyDictionary<string, Tensor> GetStateDict() =>
        layers.ToDictionary(l => l.Module + KeySuffix, l => (Tensor)l.Layer.Scale(Name));

    /// <summary>Strict: every key known, none missing, every shape right; otherwise nothing is copied and the key is named.</summary>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors)
    {
        var expected = layers.ToDictionary(l => l.Module + KeySuffix, l => l.Layer.Scale(Name));
        foreach (var (key, tensor) in tensors)
        {
            if (!expected.TryGetValue(key, out var target))
                throw new InvalidDataException($"tensor '{key}' matches no module of adapter '{Name}' (expected keys like '{expected.Keys.First()}')");
            if (!tensor.shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"tensor '{key}' has shape [{string.Join(", ", tensor.shape)}]; adapter '{Name}' expects [{string.Join(", ", target.shape)}]");
        }
        var missing = expected.Keys.FirstOrDefault(k => !tensors.ContainsKey(k));
        if (missing is not null) throw new InvalidDataException($"tensor '{missing}' is missing for adapter '{Name}'");
        using var noGrad = torch.no_grad();
        foreach (var (key, target) in expected) target.copy_(tensors[key]);
    }

    public JsonObject ToAdapterConfig() => new()
    {
        ["peft_type"] = method.PeftType,
        ["target_modules"] = new JsonArray(layers.Select(l => model.LinearSlots.First(s => s.Name == l.Module).ShortName)
            .Distinct().Order(StringComparer.Ordinal).Select(m => (JsonNode?)JsonValue.Create(m)).ToArray()),
    };

    public bool Enabled
    {
        get => _enabled;
        set
        {
            _enabled = value;
            foreach (var (_, layer) in layers) layer.SetEnabled(Name, value);
        }
    }

    public bool Merged => layers.Count > 0 && layers.All(l => l.Layer.IsMerged(Name));

    public void Merge(bool safe = true)
    {
        var done = new List<MyMethodLinear>();
        try
        {
            foreach (var (_, layer) in layers) { layer.Merge(Name, safe); done.Add(layer); }
        }
        catch
        {
            foreach (var layer in done) layer.Unmerge(Name);   // all or nothing
            throw;
        }
    }

    public void Unmerge() { foreach (var (_, layer) in layers) layer.Unmerge(Name); }

    /// <summary>Take the adapter out; a layer left without adapters gives its slot back to the layer it wrapped.</summary>
    public void Remove()
    {
        foreach (var (module, layer) in layers)
        {
            layer.RemoveAdapter(Name);
            if (!layer.HasAdapters) Unwrap(module, layer);
        }
    }

    public void MergeAndUnload(bool safe = true)
    {
        Merge(safe);
        foreach (var (module, layer) in layers)
        {
            layer.ForgetMerged(Name);
            if (!layer.HasAdapters) Unwrap(module, layer);
        }
    }

    void Unwrap(string module, MyMethodLinear layer)
    {
        // The wrapper's own tensors (its scales) are already freed; it is not disposed, since disposing a module
        // disposes its submodules, and its base layer lives on in the slot.
        model.SetLinear(module, layer.BaseLayer);
    }
}
