using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Plugins;

namespace MyMethod;

/// <summary>The plugin's one entry point: the host creates it and calls <see cref="ConfigureServices"/> once.</summary>
public sealed class MyMethodPlugin : IPeftPlugin
{
    public string Name => "mymethod";

    public string Description => "mymethod: a learned output scale per target module (y = g ⊙ W x, g initialised to ones)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, MyMethodMethod>();
}
