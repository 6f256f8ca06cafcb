using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.GaLore;

/// <summary>Entry point of the GaLore plugin (Zhao et al. 2024): registers the "galore" <see cref="IOptimizerStrategy"/>.</summary>
public sealed class GaLorePlugin : IPeftPlugin
{
    public string Name => "galore";

    public string Description => "GaLore: gradient low-rank projection optimizer (std/reverse_std/left/right/full projections, layer-wise updates)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IOptimizerStrategy, GaLoreStrategy>();
}
