using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Training;
using TorchSharp.Modules;

namespace Peft.Plugins.Lisa;

/// <summary>
/// LISA (Pan et al. 2024, "Layerwise Importance Sampled AdamW"; LMFlow's <c>DynamicLayerActivationCallback</c>):
/// <code>
///   at steps s = 0, I, 2I, …  (I = interval):
///     A_s ← k of the L decoder layers, uniformly without replacement (the hook's own generator, seeded by the run)
///     layer l ∈ A_s:  its own weights train          (its adapter, if the method added one, is frozen)
///     layer l ∉ A_s:  its own weights are frozen     (its adapter, if any, trains)
///     always-trainable parameters (embeddings, final norm, LM head by default) train in every interval
///   a parameter that stops training has its optimizer state freed (IPeftOptimizer.ReleaseState)
/// </code>
/// Unlike LMFlow, which keeps the Adam moments of every layer that was ever active (its memory grows over a run,
/// LMFlow issues 768 and 778), the state held is at most that of k layers plus the always-trainable parts.
/// A layer's weights restart Adam at t = 0 (m = v = 0, bias correction from 1) each time it is sampled after a
/// pause; a layer sampled twice in a row keeps its moments. The same rule applies to adapters (LISA + LoRA).
/// Nothing here knows the method or the model's layout: layers come from <see cref="IPeftModel.LayerIndexOf"/>,
/// adapters from the composer (<see cref="ITrainingHook.DeclareTrainable"/>).
/// </summary>
public sealed class LisaHook : ITrainingHook
{
    const ulong SeedSalt = 0x4C49_5341_0000_0000UL;   // "LISA": a stream of its own, apart from torch's

    readonly LisaOptions _options;
    readonly string _path;

    // plan, from DeclareTrainable
    int _layers = -1;
    List<(string Name, Parameter Parameter)>[] _ownWeights = [];
    List<(string Name, Parameter Parameter)>[] _adapters = [];
    List<(string Name, Parameter Parameter)> _always = [];

    // run
    IPeftOptimizer? _optimizer;
    Dictionary<IntPtr, string> _optimizerName = new();

    // state (checkpointed)
    LayerSampler? _sampler;
    int[]? _active;
    readonly List<(int Step, int[] Layers)> _intervals = new();

    public LisaHook(LisaOptions options, string configurationPath = "hooks:0")
    {
        _options = options;
        _path = configurationPath;
    }

    public LisaOptions Options => _options;

    /// <summary>The decoder layers training now (sorted), or null before the first sampling.</summary>
    public IReadOnlyList<int>? ActiveLayers => _active;

    /// <summary>Every sampling so far: the 1-based step it took effect at and the layers it chose.</summary>
    public IReadOnlyList<(int Step, int[] Layers)> Intervals => _intervals;

    /// <summary>The parameters trained in every interval.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> AlwaysTrainable => _always;

    public IReadOnlyList<(string Name, Parameter Parameter)> DeclareTrainable(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> adapterParameters)
    {
        _layers = model.Shape.NumHiddenLayers;
        if (_options.K > _layers)
            throw new PeftConfigurationException($"{_path}:k", _options.K.ToString(System.Globalization.CultureInfo.InvariantCulture),
                $"is more than the model's {_layers} decoder layers");
        _ownWeights = Enumerable.Range(0, _layers).Select(_ => new List<(string, Parameter)>()).ToArray();
        _adapters = Enumerable.Range(0, _layers).Select(_ => new List<(string, Parameter)>()).ToArray();
        var adapterHandles = adapterParameters.Select(p => p.Parameter.Handle).ToHashSet();

        var seen = new HashSet<IntPtr>();
        var outside = new List<(string, Parameter)>();
        var byName = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        foreach (var (name, p) in model.NamedParameters())
        {
            byName.TryAdd(name, p);
            if (!seen.Add(p.Handle) || !p.is_floating_point()) continue;   // tied weights once; quantized codes cannot train
            int? layer = model.LayerIndexOf(name);
            if (adapterHandles.Contains(p.Handle)) { if (layer is { } a) _adapters[a].Add((name, p)); }
            else if (layer is { } l) _ownWeights[l].Add((name, p));
            else outside.Add((name, p));
        }
        // Adapter parameters are named by the adapter (PEFT names); place them by those names too.
        foreach (var (name, p) in adapterParameters)
            if (!seen.Contains(p.Handle) && model.LayerIndexOf(name) is { } l) _adapters[l].Add((name, p));

        if (_options.AlwaysTrainable is { } names)
        {
            _always = new();
            foreach (var name in names)
            {
                if (!byName.TryGetValue(name, out var p))
                    throw new PeftConfigurationException($"{_path}:always_trainable", name, "names no parameter of the model (use the HF names of model.safetensors, e.g. lm_head.weight)");
                if (model.LayerIndexOf(name) is not null)
                    throw new PeftConfigurationException($"{_path}:always_trainable", name, "is a decoder layer's parameter; LISA samples those");
                if (!_always.Any(x => x.Parameter.Handle == p.Handle)) _always.Add((name, p));
            }
        }
        else _always = _options.AlwaysTrainableKeyword == LisaOptions.None ? new() : outside;

        return _ownWeights.SelectMany(l => l).Concat(_always).ToList();
    }

    public void OnTrainingStart(TrainingContext context)
    {
        if (_layers < 0)
            throw new InvalidOperationException("the lisa hook must be given the model through DeclareTrainable before training (the composer does this)");
        _optimizer = context.Optimizer;
        _optimizerName = new Dictionary<IntPtr, string>();
        foreach (var (name, p) in context.TrainableParameters) _optimizerName.TryAdd(p.Handle, name);
        foreach (var (name, p) in Controlled())
            if (!_optimizerName.ContainsKey(p.Handle))
                throw new InvalidOperationException($"lisa switches '{name}', which is not among the run's trainable parameters (the optimizer would never update it)");

        _sampler ??= new LayerSampler((ulong)(long)context.Seed ^ SeedSalt);
        Apply(_active);   // before the first sampling: every layer's own weights frozen; after a resume: the saved interval
    }

    public void OnStepStart(TrainingContext context)
    {
        if (_active is not null && context.Step % _options.Interval != 0) return;
        var before = Controlled().Where(p => p.Parameter.requires_grad).Select(p => p.Parameter.Handle).ToHashSet();
        _active = _sampler!.SampleWithoutReplacement(_layers, _options.K);
        Apply(_active);
        // free what stopped training: its Adam moments would otherwise stay allocated until the layer returns
        var released = Controlled().Where(p => before.Contains(p.Parameter.Handle) && !p.Parameter.requires_grad)
            .Select(p => _optimizerName[p.Parameter.Handle]).ToList();
        _optimizer!.ReleaseState(released);
        _intervals.Add((context.Step + 1, _active));
        context.Record(new JsonObject { ["hook"] = LisaHookFactory.HookName, ["active_layers"] = Layers(_active) });
    }

    /// <summary>requires_grad for one interval (null: none of the layers is active).</summary>
    void Apply(int[]? active)
    {
        for (int l = 0; l < _layers; l++)
        {
            bool on = active is not null && Array.IndexOf(active, l) >= 0;
            foreach (var (_, p) in _ownWeights[l]) p.requires_grad_(on);
            foreach (var (_, p) in _adapters[l]) p.requires_grad_(!on);
        }
        foreach (var (_, p) in _always) p.requires_grad_(true);
    }

    IEnumerable<(string Name, Parameter Parameter)> Controlled() =>
        _ownWeights.SelectMany(l => l).Concat(_adapters.SelectMany(l => l)).Concat(_always);

    static JsonArray Layers(IEnumerable<int> layers) => new(layers.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());

    public JsonObject? SaveState() => new()
    {
        ["name"] = LisaHookFactory.HookName,
        ["k"] = _options.K,
        ["interval"] = _options.Interval,
        ["generator"] = _sampler?.ToJson(),
        ["active_layers"] = _active is null ? null : Layers(_active),
        ["intervals"] = new JsonArray(_intervals.Select(i => (JsonNode?)new JsonObject { ["step"] = i.Step, ["layers"] = Layers(i.Layers) }).ToArray()),
    };

    public void LoadState(JsonObject state)
    {
        void Same(string key, int now)
        {
            var then = state[key]?.GetValue<int>() ?? throw new FormatException($"lisa state has no '{key}'");
            if (then != now)
                throw new PeftConfigurationException($"{_path}:{key}", now.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    $"differs from the checkpoint, which was made with {then}; a resumed run must keep it");
        }
        Same("k", _options.K);
        Same("interval", _options.Interval);
        int[] ReadLayers(JsonNode? node, string what)
        {
            if (node is not JsonArray a) throw new FormatException($"lisa state: {what} is not a list of layers");
            var layers = a.Select(n => n?.GetValue<int>() ?? throw new FormatException($"lisa state: {what} holds a null")).ToArray();
            if (layers.Any(l => l < 0 || (_layers >= 0 && l >= _layers)) || layers.Distinct().Count() != layers.Length)
                throw new FormatException($"lisa state: {what} [{string.Join(", ", layers)}] are not distinct layers of the model");
            return layers;
        }
        var sampler = state["generator"] is null ? null : LayerSampler.FromJson(state["generator"]);
        var active = state["active_layers"] is null ? null : ReadLayers(state["active_layers"], "active_layers");
        var intervals = (state["intervals"] as JsonArray ?? throw new FormatException("lisa state has no 'intervals' list"))
            .Select(n => (n?["step"]?.GetValue<int>() ?? throw new FormatException("lisa state: an interval has no step"), ReadLayers(n?["layers"], "an interval's layers")))
            .ToList();
        _sampler = sampler;
        _active = active;
        _intervals.Clear();
        _intervals.AddRange(intervals);
    }
}
