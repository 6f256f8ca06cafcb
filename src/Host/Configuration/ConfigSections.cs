using Microsoft.Extensions.Configuration;
using Peft.Host.Plugins;

namespace Peft.Host.Configuration;

/// <summary>
/// One known top-level section of the configuration. <see cref="Validate"/>, when set, binds the section
/// strictly (with <see cref="Abstractions.Configuration.OptionsBinding"/>) so that a wrong key or value is
/// reported when the configuration is loaded, before any work starts.
/// </summary>
public sealed record ConfigSection(string Name, string Summary, Action<IConfiguration>? Validate = null);

/// <summary>
/// The registry of top-level sections. Anything else at the top level is an error naming it and listing
/// these. To add a section or its options class, add or edit an entry here (e.g. the training code sets
/// <c>Validate = root =&gt; TrainingOptions.From(root)</c> on "training").
/// </summary>
public static class ConfigSections
{
    public const string Plugins = PluginsOptions.Section;

    public static IReadOnlyList<ConfigSection> Known { get; } = new List<ConfigSection>
    {
        new("model", "the base model: folder of config.json + safetensors weights, or a llama2.c checkpoint to import", root => Composition.ModelOptions.From(root)),
        new("data", "training data: file, format, sequence length", root => Abstractions.Configuration.OptionsBinding.Bind<Data.DataOptions>(root.GetSection("data"))),
        new("training", "the training loop: steps, batch size, learning rate, schedule, seed", root => Abstractions.Configuration.OptionsBinding.Bind<Training.TrainingOptions>(root.GetSection("training"))),
        new("method", "the PEFT method (name + that method's options, bound by its plugin)"),
        new("quantization", "the quantizer applied to the frozen base (name + its options)"),
        new("optimizer", "the optimizer strategy (name + its options)"),
        new("hooks", "training hooks, a list of { name, options } (e.g. lisa)"),
        new("output", "where adapters, checkpoints and logs are written", root => Abstractions.Configuration.OptionsBinding.Bind<Training.OutputOptions>(root.GetSection("output"))),
        new(Distributed.DistributedOptions.Section, "data-parallel training under mpiexec: zero (0|1), bucket_mb, direct_kb", root => Distributed.DistributedOptions.From(root)),
        new(Plugins, "extra folders to load plugins from", root => PluginsOptions.From(root)),
    };

    public static ConfigSection? Find(string name) =>
        Known.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase));

    public static string KnownNames => string.Join(", ", Known.Select(s => s.Name));
}
