using Microsoft.Extensions.DependencyInjection;

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
        // The training issue registers the built-in "adamw" IOptimizerStrategy here:
        // services.AddSingleton<IOptimizerStrategy, AdamWStrategy>();
    }
}
