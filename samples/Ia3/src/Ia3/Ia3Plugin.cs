using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Plugins;

namespace Ia3;

/// <summary>The plugin's one entry point: the host creates it and calls <see cref="ConfigureServices"/> once.</summary>
public sealed class Ia3Plugin : IPeftPlugin
{
    public string Name => "ia3";

    public string Description => "IA³ (Liu et al. 2022): learned vectors rescaling attention outputs and feed-forward inputs (HF PEFT semantics and adapter files)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, Ia3Method>();
}
