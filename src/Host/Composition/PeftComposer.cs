using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp.Modules;

namespace Peft.Host.Composition;

/// <summary>What the composer built around a model for one run.</summary>
public sealed record ComposedRun(
    IAdapter? Adapter,
    string MethodName,
    string? QuantizerName,
    IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters,
    IPeftOptimizer Optimizer,
    IReadOnlyList<ITrainingHook> Hooks);

/// <summary>
/// The components a configuration names, resolved from the plugin catalog and checked as a combination before
/// any model is imported or loaded (<see cref="PeftComposer.Plan"/>).
/// </summary>
public sealed record CompositionPlan(
    ComponentSelection? Quantization,
    IQuantizer? Quantizer,
    ComponentSelection? MethodSelection,
    IPeftMethod? Method,
    IReadOnlyList<(ComponentSelection Selection, ITrainingHookFactory Factory)> Hooks,
    ComponentSelection? OptimizerSelection,
    IOptimizerStrategy OptimizerStrategy)
{
    /// <summary>The method's name, or <see cref="FullFineTuning.Name"/> when there is no PEFT method.</summary>
    public string MethodName => Method?.Name ?? FullFineTuning.Name;
}

/// <summary>
/// The composition root: turns the <c>quantization</c>, <c>method</c>, <c>hooks</c>, <c>training</c> (model
/// preparation) and <c>optimizer</c> sections into plugin components applied to a model, in this order:
/// <code>
///   1. quantizer     replaces the frozen base linears (every slot but the output head); the replaced
///                    full-precision layer is disposed (the model's slots own what is in them)
///   2. method        wraps whatever is in its target slots (dense or quantized) and keeps it as its base;
///                    everything else is frozen. No method (or "full"): every parameter trains
///   3. hooks         created from their factories (LISA switches requires_grad among the trainable parameters)
///   4. preparation   frozen weights re-stored in bfloat16, activation checkpointing (<see cref="ModelPreparation"/>)
///   5. optimizer     the strategy builds the optimizer over the trainable parameters (default adamw)
/// </code>
/// That order is what makes QLoRA+DoRA (nf4 + dora), LISA+LoRA (lora + lisa hook), GaLore on INT8 (int8 +
/// galore optimizer strategy, no method) work without any plugin knowing another. A quantizer without a method
/// is accepted only with an optimizer strategy that declares <see cref="IOptimizerStrategy.TrainsQuantizedWeights"/>.
/// </summary>
public static class PeftComposer
{
    public const string DefaultOptimizer = "adamw";

    /// <summary>
    /// Resolve every component the configuration names and check the combination, without a model: an unknown
    /// name is reported with the available ones, before anything is imported or loaded.
    /// </summary>
    public static CompositionPlan Plan(PluginCatalog catalog, IConfiguration root)
    {
        var quantization = ComponentSelection.From(root, "quantization");
        var quantizer = quantization is null ? null : catalog.GetQuantizer(quantization.Name, quantization.NameKey);

        var methodSel = ComponentSelection.From(root, "method");
        IPeftMethod? method = null;
        if (methodSel is not null && string.Equals(methodSel.Name, FullFineTuning.Name, StringComparison.OrdinalIgnoreCase))
        {
            var extra = methodSel.Section.GetChildren().FirstOrDefault(c => !string.Equals(c.Key, "name", StringComparison.OrdinalIgnoreCase));
            if (extra is not null) throw new PeftConfigurationException(extra.Path, extra.Value, "unknown key (full fine-tuning takes no options)");
        }
        else if (methodSel is not null)
            method = catalog.GetMethod(methodSel.Name, methodSel.NameKey);

        var hooks = ComponentSelection.ListFrom(root, "hooks")
            .Select(h => (h, catalog.GetHookFactory(h.Name, h.NameKey)))
            .ToList();

        var optSel = ComponentSelection.From(root, "optimizer");
        var strategy = catalog.GetOptimizerStrategy(optSel?.Name ?? DefaultOptimizer, optSel?.NameKey ?? "optimizer:name");

        if (quantizer is not null && method is null && !strategy.TrainsQuantizedWeights)
            throw new PeftConfigurationException("quantization:name", quantization!.Name,
                $"a quantized base needs a PEFT method (method:name) or an optimizer strategy that trains quantized weights; optimizer '{strategy.Name}' does not");

        return new CompositionPlan(quantization, quantizer, methodSel, method, hooks, optSel, strategy);
    }

    public static ComposedRun Compose(PluginCatalog catalog, ICausalLanguageModel model, IConfiguration root, OptimizerSettings settings,
                                      string adapterName = "default") =>
        Compose(Plan(catalog, root), model, root, settings, adapterName);

    public static ComposedRun Compose(CompositionPlan plan, ICausalLanguageModel model, IConfiguration root, OptimizerSettings settings,
                                      string adapterName = "default")
    {
        // 1. quantizer: the slots it selects (default: every decoder projection; target_modules / skip_modules);
        //    the replaced full-precision layer is freed
        if (plan.Quantizer is { } quantizer) ApplyQuantization(quantizer, plan.Quantization!.Section, model);

        // 2. method: freeze everything, then the adapter's parameters are the trainable ones
        IAdapter? adapter = null;
        IReadOnlyList<(string Name, Parameter Parameter)> trainable;
        if (plan.Method is { } method)
        {
            foreach (var (_, p) in model.NamedParameters()) p.requires_grad_(false);
            adapter = method.Attach(model, adapterName, plan.MethodSelection!.Section);
            foreach (var (_, p) in adapter.TrainableParameters) p.requires_grad_(true);
            trainable = adapter.TrainableParameters;
        }
        else
        {
            // Full fine-tuning; on a quantized base (only with a strategy that trains quantized weights) the
            // floating-point parameters train as usual and the quantized weights are the strategy's.
            trainable = FullFineTuning.TrainableParameters(model, skipNonFloatingPoint: plan.Quantizer is not null);
        }

        // 3. hooks
        var hooks = plan.Hooks.Select(h => h.Factory.Create(h.Selection.Section)).ToList();
        // hooks may train parameters the method froze (LISA + LoRA: the sampled layers' own weights)
        trainable = HookParameters.Union(model, trainable, adapter?.TrainableParameters ?? [], hooks);

        // 4. model preparation: storage dtype of the frozen weights, activation checkpointing
        var training = OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingConfiguration.TrainingSection));
        ModelPreparation.Apply(model, trainable, training);

        // 5. optimizer strategy over the trainable parameters
        var optimizer = plan.OptimizerStrategy.Create(model, trainable, settings, plan.OptimizerSelection?.Section ?? root.GetSection("optimizer"));

        return new ComposedRun(adapter, plan.MethodName, plan.Quantization?.Name, trainable, optimizer, hooks);
    }

    /// <summary>
    /// Replace the slots <paramref name="quantizer"/> selects with quantized layers and free the layers replaced. A slot
    /// that already holds a quantized layer (a model folder saved quantized) is kept as it is: no re-quantization.
    /// </summary>
    public static void ApplyQuantization(IQuantizer quantizer, IConfigurationSection section, IPeftModel model)
    {
        foreach (var slot in quantizer.SelectTargets(model.LinearSlots, section))
        {
            var replaced = model.GetLinear(slot.Name);
            if (replaced is IQuantizedLinear) continue;
            var quantized = quantizer.Quantize(slot.Name, replaced, section);
            model.SetLinear(slot.Name, quantized);
            if (!ReferenceEquals(quantized, replaced)) replaced.Module.Dispose();
        }
    }
}
