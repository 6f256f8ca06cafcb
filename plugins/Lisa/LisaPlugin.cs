using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.Lisa;

/// <summary>Entry point of the LISA plugin (Pan et al. 2024): it is to register the "lisa" <see cref="Peft.Abstractions.Training.ITrainingHookFactory"/>.</summary>
public sealed class LisaPlugin : IPeftPlugin
{
    public string Name => "lisa";

    public string Description => "LISA: layerwise importance sampling of trained layers (hook not implemented yet)";

    public void ConfigureServices(IServiceCollection services)
    {
        // TODO: services.AddSingleton<ITrainingHookFactory, LisaHookFactory>(); once the LISA hook exists.
    }
}
