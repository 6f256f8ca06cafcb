using Microsoft.Extensions.DependencyInjection;

namespace Peft.Abstractions.Plugins;

/// <summary>
/// The one entry point of a plugin assembly. The host finds the single public, non-abstract class
/// implementing this interface in each plugin, creates it with its parameterless constructor, and calls
/// <see cref="ConfigureServices"/> once. Register what the plugin provides as singletons:
/// <see cref="Methods.IPeftMethod"/>, <see cref="Quantization.IQuantizer"/>,
/// <see cref="Optimization.IOptimizerStrategy"/>, <see cref="Training.ITrainingHookFactory"/>.
/// </summary>
public interface IPeftPlugin
{
    /// <summary>Unique plugin name, e.g. "lora". Two plugins with the same name are a load error.</summary>
    string Name { get; }

    /// <summary>One line: what the plugin is.</summary>
    string Description { get; }

    /// <summary>Register the plugin's services. Called once, before the service provider is built.</summary>
    void ConfigureServices(IServiceCollection services);
}
