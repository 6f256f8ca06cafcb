using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.Lora;

/// <summary>Entry point of the LoRA plugin (Hu et al. 2021): registers the "lora" <see cref="IPeftMethod"/>.</summary>
public sealed class LoraPlugin : IPeftPlugin
{
    public string Name => "lora";

    public string Description => "LoRA: low-rank adapters on linear layers (HF PEFT semantics and adapter files)";

    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, LoraMethod>();
}
