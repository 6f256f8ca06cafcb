using Peft.Host.Composition;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;

namespace Peft.Bench;

/// <summary>
/// The model of <see cref="Workload"/> with a variant composed onto it exactly as <c>peft train</c> does
/// (plugins loaded from plugins/, seed, then <see cref="PeftComposer"/>). Shared by the timed run and the breakdown.
/// </summary>
internal sealed class ComposedWorkload : IDisposable
{
    public required TrainingOptions Options { get; init; }
    public required LlamaForCausalLM Model { get; init; }
    public required ComposedRun Composed { get; init; }
    public required PluginCatalog Catalog { get; init; }

    public static ComposedWorkload Create(Variant variant, BenchOptions o, string outputDir)
    {
        var root = Workload.Configuration(variant, o, outputDir);
        var options = Peft.Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingConfiguration.TrainingSection));
        var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, root);
        torch.manual_seed(o.Seed);
        var model = new LlamaForCausalLM(Workload.Stories15MShape());
        // As peft train: the seed also fixes the adapter's initialisation.
        torch.manual_seed(o.Seed);
        var composed = PeftComposer.Compose(catalog, model, root, options.ToOptimizerSettings());
        return new ComposedWorkload { Options = options, Model = model, Composed = composed, Catalog = catalog };
    }

    public void Dispose()
    {
        Composed.Optimizer.Dispose();
        Model.Dispose();
        Catalog.Dispose();
    }
}
