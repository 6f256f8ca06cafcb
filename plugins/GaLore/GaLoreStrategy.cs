using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using TorchSharp.Modules;

namespace Peft.Plugins.GaLore;

/// <summary>
/// <c>"optimizer": {"name": "galore", ...}</c>: GaLore on the 2-D weights of the targeted linear slots (default:
/// every attention and MLP projection, <see cref="LinearSlot.IsDecoderProjection"/>), plain AdamW on every other
/// trainable parameter. Composes with any trainable set: full fine-tuning (no method), or a quantized base whose
/// weights train through float proxies (Q-GaLore).
/// </summary>
public sealed class GaLoreStrategy : IOptimizerStrategy
{
    public const string StrategyName = "galore";

    public string Name => StrategyName;

    public string Description => "GaLore: Adam on SVD-projected low-rank gradients of the attention/MLP weights (official galore_torch semantics), AdamW elsewhere";

    /// <summary>GaLore trains the weights of a quantized base itself (Q-GaLore: <c>quantization: int8</c>, no method).</summary>
    public bool TrainsQuantizedWeights => true;

    public IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options)
        => throw new InvalidOperationException("the galore optimizer chooses its targets from the model's linear slots; create it with the model");

    public IPeftOptimizer Create(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options)
    {
        var o = GaLoreOptions.FromConfiguration(options);
        // quantized weights that train (Q-GaLore): their float gradient proxies join the parameters, under the weight's HF name
        var quantized = new Dictionary<string, ITrainableQuantizedWeight>(StringComparer.Ordinal);
        foreach (var slot in model.LinearSlots)
            if (model.GetLinear(slot.Name) is ITrainableQuantizedWeight q)
                quantized[slot.Name + ".weight"] = q;
        var all = parameters.Concat(quantized.Select(kv => (kv.Key, kv.Value.GradientProxy))).ToList();
        foreach (var q in quantized.Values) q.GradientProxy.requires_grad_(true);
        var targets = TargetParameters(model, all, o, options is IConfigurationSection s ? s.Path : "optimizer");
        var optimizer = new GaLoreOptimizer(all, targets, settings, o, IGaLoreCompute.For(model.Device), quantized);
        if (!o.Layerwise) return optimizer;
        return new GaLoreLayerwiseOptimizer(optimizer, model);
    }

    /// <summary>
    /// What the optimizer will hold for <paramref name="parameters"/>, for <c>peft plan</c> (official galore_torch,
    /// <see cref="GaLoreProjector"/>). Per tensor an int64 step counter (8 bytes). A targeted (m, n) weight (2-D, inside
    /// a decoder layer, in <c>target_modules</c> when set) with r = min(rank, m, n) keeps Adam's two moments in the
    /// projected gradient's shape, (m, r), (r, n) or (r, r), and the projector: Right (r, n), Left (m, r), Full both;
    /// <c>std</c> puts it on the smaller side, so moments r · max(m, n) each and a projector r · min(m, n). Every other
    /// tensor: plain AdamW moments, 2 · elements. Layer-wise: one tensor's gradient is held at a time (the largest).
    /// </summary>
    public Abstractions.Memory.OptimizerMemoryEstimate? EstimateMemory(IReadOnlyList<Abstractions.Memory.PlannedParameter> parameters, IConfiguration options)
    {
        var o = GaLoreOptions.FromConfiguration(options);
        foreach (var (key, value, problem) in o.Validate())
            throw new PeftConfigurationException(options is IConfigurationSection s ? $"{s.Path}:{key}" : key, value?.ToString(), problem);
        long state = 0, projections = 0;
        foreach (var p in parameters)
        {
            state += sizeof(long); // step counter
            bool targeted = p.Shape.Count == 2 && p.LayerIndex is not null
                && (o.TargetModules is not { } wanted || wanted.Any(w => p.Name == w + ".weight" || p.Name.EndsWith("." + w + ".weight", StringComparison.Ordinal)));
            if (!targeted) { state += 2 * p.Elements * p.ElementBytes; continue; }
            long m = p.Shape[0], n = p.Shape[1], r = Math.Min(o.Rank, Math.Min(m, n));
            var (moment, projector) = GaLoreProjector.SideOf(o.ProjectionType, m, n) switch
            {
                GaLoreProjector.Side.Right => (m * r, r * n),
                GaLoreProjector.Side.Left => (r * n, m * r),
                _ => (r * r, m * r + r * n),
            };
            state += 2 * moment * p.ElementBytes;
            projections += projector * p.ElementBytes;
        }
        long? held = o.Layerwise && parameters.Count > 0 ? parameters.Max(p => p.Elements) : null;
        return new Abstractions.Memory.OptimizerMemoryEstimate(state, projections, held);
    }

    /// <summary>
    /// The trainable 2-D parameters that belong to the targeted slots (matched by tensor identity, so whatever the
    /// slot holds — a dense weight or a quantized layer's float proxy — is found without parsing names).
    /// </summary>
    public static IReadOnlyList<string> TargetParameters(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> parameters,
                                                         GaLoreOptions options, string sectionPath)
    {
        IEnumerable<LinearSlot> slots;
        if (options.TargetModules is { } wanted)
        {
            foreach (var w in wanted)
                if (!model.LinearSlots.Any(slot => slot.ShortName == w || slot.Name == w))
                    throw new PeftConfigurationException($"{sectionPath}:target_modules", w,
                        $"matches no linear layer of the model (short names: {string.Join(", ", model.LinearSlots.Select(x => x.ShortName).Distinct())})");
            slots = model.LinearSlots.Where(slot => wanted.Contains(slot.ShortName) || wanted.Contains(slot.Name));
        }
        else slots = model.LinearSlots.Where(slot => slot.IsDecoderProjection);

        var byHandle = new Dictionary<IntPtr, string>();
        foreach (var (name, p) in parameters) byHandle.TryAdd(p.Handle, name);
        var targets = new List<string>();
        foreach (var slot in slots)
            foreach (var p in model.GetLinear(slot.Name) is ITrainableQuantizedWeight q ? [q.GradientProxy] : model.GetLinear(slot.Name).Module.named_parameters().Select(np => np.parameter))
                if (p.ndim == 2 && byHandle.TryGetValue(p.Handle, out var name) && !targets.Contains(name))
                    targets.Add(name);
        if (targets.Count == 0)
            throw new PeftConfigurationException($"{sectionPath}:name", StrategyName,
                "finds no trainable 2-D weight in the targeted linear layers (a PEFT method froze them? GaLore trains full weights: use no method or \"full\")");
        return targets;
    }
}
