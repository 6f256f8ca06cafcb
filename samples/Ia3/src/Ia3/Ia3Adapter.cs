using System.Text.Json.Nodes;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ia3;

/// <summary>
/// One named IA³ adapter on a model. Names (see <see cref="IAdapter"/>): the vector of module M is
/// <c>M.ia3_l.&lt;adapter&gt;</c> in the model and <c>M.ia3_l</c> in the adapter file, where the host adds HF PEFT's
/// <c>base_model.model.</c> prefix: <c>base_model.model.model.layers.0.self_attn.k_proj.ia3_l</c>.
/// </summary>
public sealed class Ia3Adapter(Ia3Method method, IPeftModel model, string name, List<(string Module, Ia3Linear Layer)> layers) : IAdapter
{
    public const string KeySuffix = ".ia3_l";

    bool _enabled = true;

    public string Name { get; } = name;
    public string MethodName => method.Name;
    public IReadOnlyList<string> TargetModules => layers.Select(l => l.Module).ToList();

    public IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters =>
        layers.Select(l => ($"{l.Module}{KeySuffix}.{Name}", l.Layer.Vector(Name))).ToList();

    public IReadOnlyDictionary<string, Tensor> GetStateDict() =>
        layers.ToDictionary(l => l.Module + KeySuffix, l => (Tensor)l.Layer.Vector(Name));

    /// <summary>Strict: every key known, none missing, every shape right; otherwise nothing is copied and the key is named.</summary>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors)
    {
        var expected = layers.ToDictionary(l => l.Module + KeySuffix, l => l.Layer.Vector(Name));
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

    /// <summary>PEFT's IA3Config fields; the module lists are short names, as PEFT writes them.</summary>
    public JsonObject ToAdapterConfig() => new()
    {
        ["peft_type"] = method.PeftType,
        ["target_modules"] = ShortNames(layers),
        ["feedforward_modules"] = ShortNames(layers.Where(l => l.Layer.IsFeedforward)),
        ["init_ia3_weights"] = true,
        ["fan_in_fan_out"] = false,
        ["modules_to_save"] = null,
    };

    JsonArray ShortNames(IEnumerable<(string Module, Ia3Linear Layer)> of) =>
        new(of.Select(l => model.LinearSlots.First(s => s.Name == l.Module).ShortName)
            .Distinct().Order(StringComparer.Ordinal).Select(m => (JsonNode?)JsonValue.Create(m)).ToArray());

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
        var done = new List<Ia3Linear>();
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

    void Unwrap(string module, Ia3Linear layer)
    {
        // The wrapper's own tensors (its scales) are already freed; it is not disposed, since disposing a module
        // disposes its submodules, and its base layer lives on in the slot.
        model.SetLinear(module, layer.BaseLayer);
    }
}
