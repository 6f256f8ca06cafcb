using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Optimization;
using Peft.Host.Optimization;

namespace Peft.Host.Plugins;

/// <summary>
/// The services the host provides itself, registered into the same collection as the plugins' (so they are
/// looked up by name the same way and may not share a name with a plugin's). Every command that loads the
/// <see cref="PluginCatalog"/> passes <see cref="Register"/> (through <see cref="PluginCatalog.LoadForHost"/>).
/// </summary>
public static class BuiltInServices
{
    public static void Register(IServiceCollection services)
    {
        services.AddSingleton<IOptimizerStrategy, AdamWStrategy>();
    }
}
