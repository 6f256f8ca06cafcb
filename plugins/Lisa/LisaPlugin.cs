using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Training;

namespace Peft.Plugins.Lisa;

/// <summary>Entry point of the LISA plugin (Pan et al. 2024, arXiv 2403.17919): registers the "lisa" <see cref="ITrainingHookFactory"/>.</summary>
public sealed class LisaPlugin : IPeftPlugin
{
    public string Name => "lisa";

    public string Description => "LISA: layerwise importance-sampled training of k decoder layers per interval (a training hook)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<ITrainingHookFactory, LisaHookFactory>();
}
