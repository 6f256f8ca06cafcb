using System.Globalization;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Model;
using Peft.Host.Composition;
using Peft.Host.Training;

namespace Peft.Host.Planning;

/// <summary>
/// The memory planner: the bytes a training run holds, by component, from the model's shapes and the same
/// component sections <c>peft train</c> composes (quantization → method → hooks → optimizer). Each figure comes
/// from the component's plugin when it is loaded and gives an estimate (<c>IPeftMethod.EstimateMemory</c>,
/// <c>IQuantizer.BitsPerParameter</c>, <c>IOptimizerStrategy.EstimateMemory</c>,
/// <c>ITrainingHookFactory.EstimateMemory</c>), else from <see cref="PlannerFormulas"/>; <see cref="MemoryPlan.Sources"/>
/// says which. Pure arithmetic: no tensor is created.
/// </summary>
public static class MemoryPlanner
{
    public static MemoryPlan Plan(PlanModel model, PlanSettings s, IPlanComponentSource components)
    {
        var root = s.Components;
        var sources = new List<string>();
        var notes = new List<string>();
        var shape = model.Shape;

        // 1. quantizer: every linear but the output head (as PeftComposer)
        var quantSel = ComponentSelection.From(root, "quantization");
        var quantized = new Dictionary<string, (long Codes, long Stats)>(StringComparer.Ordinal);
        if (quantSel is not null)
        {
            var plugin = components.Quantizer(quantSel.Name);
            double? bits = plugin?.BitsPerParameter(quantSel.Section);
            bool exact = false;
            foreach (var slot in model.Slots.Where(x => x.Kind != LinearKind.OutputHead))
            {
                if (plugin?.QuantizedBytes(slot, quantSel.Section) is { } held)
                {
                    quantized[slot.Name] = held;
                    exact = true;
                }
                else if (bits is { } b)
                {
                    long total = (long)Math.Ceiling(slot.Parameters * b / 8), codes = (long)Math.Ceiling(slot.Parameters * Math.Floor(b) / 8);
                    quantized[slot.Name] = (codes, total - codes);
                }
                else
                {
                    quantized[slot.Name] = PlannerFormulas.QuantizedBytes(quantSel.Name, slot, quantSel.Section)
                        ?? throw new PeftConfigurationException(quantSel.NameKey, quantSel.Name, "unknown quantizer: no loaded plugin provides it and the planner has no formula for it (nf4, fp4, int8)");
                }
            }
            sources.Add(bits is { } pb
                ? F($"quantizer {quantSel.Name}: plugin's {(exact ? "QuantizedBytes" : "BitsPerParameter")} ({pb:0.####} bits per weight)")
                : F($"quantizer {quantSel.Name}: planner formula ({PlannerFormulas.BitsPerParameter(quantSel.Name, quantSel.Section):0.####} bits per weight){NotLoaded(plugin is null, "quantizer")}"));
        }

        // 2. method
        var methodSel = ComponentSelection.From(root, "method");
        var optSel = ComponentSelection.From(root, "optimizer");
        string optName = optSel?.Name ?? PeftComposer.DefaultOptimizer;
        bool full = methodSel is null || string.Equals(methodSel.Name, FullFineTuning.Name, StringComparison.OrdinalIgnoreCase);
        var strategy = components.OptimizerStrategy(optName);
        int optBytes = s.OptimizerDtypeBytes;
        List<PlannedParameter> trainable;
        long trainableWeightBytes, baseWeightBytes = 0, quantStats = quantized.Values.Sum(q => q.Stats);
        var quantizedTrainable = new HashSet<string>(StringComparer.Ordinal); // Q-GaLore: weights that train in their quantized form
        IReadOnlyList<PlannedParameter>? adapterFormula = null;
        double adapterDropout = 0;
        if (full)
        {
            bool trainsQuantized = strategy?.TrainsQuantizedWeights ?? string.Equals(optName, "galore", StringComparison.OrdinalIgnoreCase);
            if (quantSel is not null && !trainsQuantized)
                throw new PeftConfigurationException("quantization:name", quantSel.Name, $"a quantized base needs a PEFT method (method:name) or an optimizer strategy that trains quantized weights (galore); optimizer '{optName}' does not");
            trainable = model.Tensors.Select(t => new PlannedParameter(t.Name, t.Shape, t.LayerIndex, optBytes)).ToList();
            trainableWeightBytes = 0;
            foreach (var t in model.Tensors)
            {
                if (t.Slot is { } slot && quantized.TryGetValue(slot.Name, out var q)) { trainableWeightBytes += q.Codes; quantizedTrainable.Add(t.Name); }
                else trainableWeightBytes += t.Elements * s.TrainDtypeBytes;
            }
            if (quantizedTrainable.Count > 0)
                notes.Add("GaLore on a quantized base (Q-GaLore): the quantized weights train in place (stochastic rounding), without a master copy");
            sources.Add("method full: every parameter trains");
        }
        else
        {
            var m = methodSel!;
            var plugin = components.Method(m.Name);
            var estimate = plugin?.EstimateMemory(shape, model.Slots, m.Section);
            adapterFormula = PlannerFormulas.AdapterTensors(m.Name, model, m.Section, optBytes);
            adapterDropout = PlannerFormulas.Double(m.Section, "lora_dropout", 0);
            if (estimate is not null)
            {
                if (adapterFormula is not null && adapterFormula.Sum(p => p.Elements) == estimate.TrainableParameters)
                    trainable = adapterFormula.ToList();
                else
                {
                    // spread evenly over the decoder layers so a hook (LISA) can restrict it
                    trainable = Spread(estimate.TrainableParameters, estimate.TensorCount ?? shape.NumHiddenLayers, shape.NumHiddenLayers, optBytes);
                    if (adapterFormula is not null) notes.Add($"the {m.Name} plugin's estimate ({estimate.TrainableParameters:N0} parameters) differs from the planner's formula ({adapterFormula.Sum(p => p.Elements):N0}); the plugin's is used");
                    adapterFormula = null;
                }
                trainableWeightBytes = s.Precision == PlanPrecision.Fp32 ? estimate.WeightBytes : estimate.TrainableParameters * s.TrainDtypeBytes;
                sources.Add($"method {m.Name}: plugin's EstimateMemory ({estimate.TrainableParameters:N0} trainable parameters)");
            }
            else if (adapterFormula is not null)
            {
                trainable = adapterFormula.ToList();
                trainableWeightBytes = trainable.Sum(p => p.Elements) * s.TrainDtypeBytes;
                sources.Add($"method {m.Name}: planner formula{NotLoaded(plugin is null, "method")}");
            }
            else
            {
                throw new PeftConfigurationException(m.NameKey, m.Name, plugin is null
                    ? "unknown method: no loaded plugin provides it and the planner has no formula for it (lora, dora; 'peft plugins' lists what is loaded)"
                    : "its plugin gives no memory estimate (IPeftMethod.EstimateMemory returns null) and the planner has no formula for it");
            }
            foreach (var t in model.Tensors)
                baseWeightBytes += t.Slot is { } slot && quantized.TryGetValue(slot.Name, out var q) ? q.Codes : t.Elements * s.BaseDtypeBytes;
        }

        // 3. hooks: how many decoder layers train at once, and what else they switch on
        int? activeLayers = null;
        bool hookLayerWeights = false, hookOutside = false;
        foreach (var h in ComponentSelection.ListFrom(root, "hooks"))
        {
            var plugin = components.Hook(h.Name);
            var est = plugin?.EstimateMemory(shape, h.Section);   // hooks plan themselves (the lisa plugin's)
            string how = "plugin's EstimateMemory";
            if (est is null)
            {
                if (plugin is null) throw new PeftConfigurationException(h.NameKey, h.Name, "unknown hook: no loaded plugin provides it");
                notes.Add($"hook {h.Name} gives no memory estimate; assumed not to change what trains");
                continue;
            }
            activeLayers = Math.Min(activeLayers ?? int.MaxValue, est.ActiveDecoderLayers);
            hookLayerWeights |= est.TrainsLayerWeights;
            hookOutside |= est.TrainsOutsideLayers;
            sources.Add($"hook {h.Name}: {how} ({est.ActiveDecoderLayers} of {shape.NumHiddenLayers} decoder layers train at once)");
        }
        var adapterTensors = trainable;
        HashSet<int> chosenLayers;
        List<PlannedParameter> active;
        if (!full && activeLayers is not null && hookLayerWeights)
        {
            // under a method (LISA + LoRA): the layers' own weights (and the outside parameters) join the trainable set;
            // the active layers train their own weights, the other layers their adapters
            var own = model.Tensors.Where(t => (t.LayerIndex is not null || hookOutside) && !(t.Slot is { } sl && quantized.ContainsKey(sl.Name)))
                .Select(t => new PlannedParameter(t.Name, t.Shape, t.LayerIndex, optBytes)).ToList();
            foreach (var t in own)
            {
                baseWeightBytes -= t.Elements * s.BaseDtypeBytes;
                trainableWeightBytes += t.Elements * s.TrainDtypeBytes;
            }
            trainable = adapterTensors.Concat(own).ToList();
            chosenLayers = ActiveLayers(own, activeLayers, shape.NumHiddenLayers);
            active = own.Where(p => p.LayerIndex is null || chosenLayers.Contains(p.LayerIndex.Value))
                .Concat(adapterTensors.Where(p => p.LayerIndex is not { } l || !chosenLayers.Contains(l))).ToList();
            notes.Add($"{string.Join(", ", ComponentSelection.ListFrom(root, "hooks").Select(h => h.Name))} under a method: the {activeLayers} active layers train their own weights (adapters frozen), the other layers their adapters" +
                      (hookOutside ? "; embeddings, final norm and head train throughout" : ""));
        }
        else
        {
            chosenLayers = ActiveLayers(trainable, activeLayers, shape.NumHiddenLayers);
            active = trainable.Where(p => p.LayerIndex is null || chosenLayers.Contains(p.LayerIndex.Value)).ToList();
        }

        // 4. optimizer
        var optSection = optSel?.Section ?? root.GetSection("optimizer");
        var optEstimate = strategy?.EstimateMemory(active, optSection);
        string optHow = optEstimate is not null ? (strategy!.GetType().Assembly == typeof(MemoryPlanner).Assembly ? "host's EstimateMemory" : "plugin's EstimateMemory") : "planner formula" + NotLoaded(strategy is null, "optimizer strategy");
        optEstimate ??= PlannerFormulas.Optimizer(optName, active, optSection)
            ?? throw new PeftConfigurationException(optSel?.NameKey ?? "optimizer:name", optName, strategy is null
                ? "unknown optimizer strategy: no loaded plugin provides it ('peft plugins' lists what is loaded)"
                : "its plugin gives no memory estimate and the planner has no formula for it");
        sources.Add($"optimizer {optName}: {optHow}");

        long activeElements = active.Sum(p => p.Elements);
        long gradientBytes = (optEstimate.HeldGradientElements ?? activeElements) * s.TrainDtypeBytes;
        long master = s.HasMasterCopy ? active.Where(p => !quantizedTrainable.Contains(p.Name)).Sum(p => p.Elements) * 4 : 0;

        // 5. activations
        ActivationBreakdown? acts = null;
        if (s.BatchSize > 0)
        {
            var layers = new List<LayerTraining>(shape.NumHiddenLayers);
            var ranks = adapterFormula?.Where(p => p.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal))
                .ToDictionary(p => p.Name[..^".lora_A.weight".Length], p => (int)p.Shape[0]);
            var slotByName = model.Slots.ToDictionary(x => x.Name);
            for (int l = 0; l < shape.NumHiddenLayers; l++)
            {
                bool on = chosenLayers.Contains(l);
                if (full) { layers.Add(new(on, LayerTraining.NoAdapters)); continue; }
                if (hookLayerWeights && activeLayers is not null)
                {
                    if (on) { layers.Add(new(true, LayerTraining.NoAdapters)); continue; }
                    on = true; // an inactive layer's adapter trains
                }
                var r = new Dictionary<LinearKind, int>();
                if (on && ranks is not null)
                    foreach (var (name, rank) in ranks)
                        if (slotByName[name].LayerIndex == l) r[slotByName[name].Kind] = rank;
                if (on && ranks is null) r[LinearKind.AttentionQuery] = 0; // an adapter of unknown shape: at least the stream needs a gradient
                layers.Add(new(false, r, adapterDropout));
            }
            bool upcast = s.Precision == PlanPrecision.Fp32 && !full && !hookLayerWeights && quantSel is null && s.BaseDtypeBytes != s.ActivationDtypeBytes;
            bool outsideTrains = full || (hookOutside && activeLayers is not null && !full);
            acts = ActivationModel.Estimate(new ActivationInputs(model, layers, EmbeddingTrains: outsideTrains, HeadTrains: outsideTrains,
                (long)s.BatchSize * s.SeqLen, s.ActivationDtypeBytes, s.ActivationCheckpointing, null, s.LossChunkTokens));
            // a frozen 16-bit weight is up-cast per call in forward and again in backward, one layer at a time; autograd keeps only the 16-bit weight
            if (upcast) notes.Add("the frozen base is stored in 16 bits and up-cast per call, one layer at a time (forward and backward); no up-cast copy is kept for backward");
            if (quantSel is not null) notes.Add("a quantized layer keeps no dequantized weight for backward: it dequantizes again (one layer's weight at a time)");
        }

        if (s.HasMasterCopy) notes.Add("mixed precision: 16-bit trainable weights and gradients, fp32 master copy and fp32 optimizer moments");
        if (activeLayers is not null && !full && !hookLayerWeights) notes.Add("the adapter's gradients and optimizer state exist only for the active layers; the others' adapter weights stay held");

        return new MemoryPlan
        {
            Model = model.Name,
            Label = s.Label.Length > 0 ? s.Label : Describe(quantSel?.Name, full ? "full" : methodSel!.Name, optName, ComponentSelection.ListFrom(root, "hooks").Select(h => h.Name)),
            Settings = s,
            TotalParameters = model.TotalParameters,
            TrainableParameters = trainable.Sum(p => p.Elements),
            AddedParameters = full ? 0 : adapterTensors.Sum(p => p.Elements),
            QuantizedBaseCodeBytes = quantized.Where(q => !quantizedTrainable.Any(t => t.StartsWith(q.Key + ".", StringComparison.Ordinal))).Sum(q => q.Value.Codes),
            ActiveTrainableParameters = activeElements,
            Bytes = new MemoryComponents
            {
                BaseWeightBytes = baseWeightBytes,
                TrainableWeightBytes = trainableWeightBytes,
                GradientBytes = gradientBytes,
                OptimizerStateBytes = optEstimate.StateBytes,
                MasterWeightBytes = master,
                QuantizationStatisticsBytes = quantStats,
                ProjectionBytes = optEstimate.ProjectionBytes,
                ActivationBytes = acts?.Total ?? 0,
            },
            Activations = acts,
            Sources = sources,
            Notes = notes,
        };
    }

    /// <summary>The decoder layers whose trainable tensors hold gradients and state: all, or the <paramref name="k"/> heaviest.</summary>
    static HashSet<int> ActiveLayers(IReadOnlyList<PlannedParameter> trainable, int? k, int layers)
    {
        if (k is null) return Enumerable.Range(0, layers).ToHashSet();
        var bySize = Enumerable.Range(0, layers)
            .Select(l => (Layer: l, Elements: trainable.Where(p => p.LayerIndex == l).Sum(p => p.Elements)))
            .OrderByDescending(x => x.Elements).ThenBy(x => x.Layer);
        return bySize.Take(k.Value).Select(x => x.Layer).ToHashSet();
    }

    /// <summary><paramref name="tensors"/> tensors of equal size (the remainder on the first ones), assigned to layers in order.</summary>
    static List<PlannedParameter> Spread(long count, int tensors, int layers, int elementBytes)
    {
        tensors = Math.Max(1, tensors);
        var list = new List<PlannedParameter>(tensors);
        for (int j = 0; j < tensors; j++)
        {
            long share = count / tensors + (j < count % tensors ? 1 : 0);
            int layer = (int)((long)j * layers / tensors);
            list.Add(new PlannedParameter($"adapter.{j}", [share], layer, elementBytes));
        }
        return list;
    }

    static string NotLoaded(bool missing, string kind) => missing ? $" (no loaded plugin provides this {kind})" : " (its plugin gives no estimate)";

    static string Describe(string? quantizer, string method, string optimizer, IEnumerable<string> hooks)
    {
        var parts = new List<string>();
        if (quantizer is not null) parts.Add(quantizer);
        parts.Add(method);
        parts.AddRange(hooks);
        if (!string.Equals(optimizer, PeftComposer.DefaultOptimizer, StringComparison.OrdinalIgnoreCase)) parts.Add(optimizer);
        return string.Join(" + ", parts);
    }

    static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
