using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.Dora;

/// <summary>Entry point of the DoRA plugin (Liu et al. 2024): it is to register the "dora" <see cref="Peft.Abstractions.Methods.IPeftMethod"/>.</summary>
public sealed class DoraPlugin : IPeftPlugin
{
    public string Name => "dora";

    public string Description => "DoRA: weight-decomposed low-rank adaptation (method not implemented yet)";

    public void ConfigureServices(IServiceCollection services)
    {
        // TODO: services.AddSingleton<IPeftMethod, DoraMethod>(); once the DoRA method exists.
    }
}
