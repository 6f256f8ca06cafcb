using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.Dora;

/// <summary>Entry point of the DoRA plugin (Liu et al. 2024): registers the "dora" <see cref="IPeftMethod"/>.</summary>
public sealed class DoraPlugin : IPeftPlugin
{
    public string Name => "dora";

    public string Description => "DoRA: weight-decomposed low-rank adaptation, a LoRA variant (HF PEFT semantics and adapter files, use_dora)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, DoraMethod>();
}
