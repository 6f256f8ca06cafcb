using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.GaLore;

/// <summary>Entry point of the GaLore plugin (Zhao et al. 2024): it is to register the "galore" <see cref="Peft.Abstractions.Optimization.IOptimizerStrategy"/>.</summary>
public sealed class GaLorePlugin : IPeftPlugin
{
    public string Name => "galore";

    public string Description => "GaLore: gradient low-rank projection optimizer (optimizer strategy not implemented yet)";

    public void ConfigureServices(IServiceCollection services)
    {
        // TODO: services.AddSingleton<IOptimizerStrategy, GaLoreStrategy>(); once the GaLore optimizer exists.
    }
}
