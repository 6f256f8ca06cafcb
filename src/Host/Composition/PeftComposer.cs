using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Training;
using Peft.Host.Model;
using Peft.Host.Plugins;
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
/// The composition root: turns the <c>quantization</c>, <c>method</c>, <c>hooks</c> and <c>optimizer</c>
/// sections into plugin components applied to a model, in this order:
/// quantizer (replaces frozen base linears) → method (wraps whatever is in the slots) → hooks → optimizer.
/// That order is what makes QLoRA+DoRA (nf4 + dora), LISA+LoRA (lisa hook + lora) and GaLore on INT8
/// (int8 + galore optimizer) work without any plugin knowing another. No method (or <c>"name": "full"</c>)
/// is full fine-tuning: every parameter trains.
/// </summary>
public static class PeftComposer
{
    public const string FullFineTuning = "full";
    public const string DefaultOptimizer = "adamw";

    public static ComposedRun Compose(PluginCatalog catalog, ICausalLanguageModel model, IConfiguration root, Abstractions.Optimization.OptimizerSettings settings,
                                      string adapterName = "default")
    {
        // 1. quantizer: the slots it selects (default: every decoder projection; target_modules / skip_modules);
        //    the full-precision layer each replaces is freed here (the model hands it back to the caller).
        var quantization = ComponentSelection.From(root, "quantization");
        if (quantization is not null)
        {
            var quantizer = catalog.GetQuantizer(quantization.Name, quantization.NameKey);
            foreach (var slot in quantizer.SelectTargets(model.LinearSlots, quantization.Section))
            {
                var replaced = model.GetLinear(slot.Name);
                model.SetLinear(slot.Name, quantizer.Quantize(slot.Name, replaced, quantization.Section));
                replaced.Module.Dispose();
            }
        }

        // 2. method: freeze everything, then the adapter's parameters are the trainable ones
        var methodSel = ComponentSelection.From(root, "method");
        IAdapter? adapter = null;
        IReadOnlyList<(string Name, Parameter Parameter)> trainable;
        string methodName;
        if (methodSel is null || string.Equals(methodSel.Name, FullFineTuning, StringComparison.OrdinalIgnoreCase))
        {
            if (methodSel is not null)
            {
                var extra = methodSel.Section.GetChildren().FirstOrDefault(c => !string.Equals(c.Key, "name", StringComparison.OrdinalIgnoreCase));
                if (extra is not null) throw new PeftConfigurationException(extra.Path, extra.Value, "unknown key (full fine-tuning takes no options)");
            }
            if (quantization is not null)
                throw new PeftConfigurationException("quantization:name", quantization.Name, "a quantized base cannot be fully fine-tuned; choose a PEFT method (method:name)");
            methodName = FullFineTuning;
            trainable = Training.FullFineTuning.TrainableParameters(model);
        }
        else
        {
            var method = catalog.GetMethod(methodSel.Name, methodSel.NameKey);
            foreach (var (_, p) in model.NamedParameters()) p.requires_grad_(false);
            adapter = method.Attach(model, adapterName, methodSel.Section);
            foreach (var (_, p) in adapter.TrainableParameters) p.requires_grad_(true);
            trainable = adapter.TrainableParameters;
            methodName = method.Name;
        }

        // 3. hooks
        var hooks = ComponentSelection.ListFrom(root, "hooks")
            .Select(h => catalog.GetHookFactory(h.Name, h.NameKey).Create(h.Section))
            .ToList();

        // 4. optimizer strategy over the trainable parameters
        var optSel = ComponentSelection.From(root, "optimizer");
        var strategy = catalog.GetOptimizerStrategy(optSel?.Name ?? DefaultOptimizer, optSel?.NameKey ?? "optimizer:name");
        var optimizer = strategy.Create(trainable, settings, optSel?.Section ?? root.GetSection("optimizer"));

        return new ComposedRun(adapter, methodName, quantization?.Name, trainable, optimizer, hooks);
    }
}
