using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.Lora;

/// <summary>Entry point of the LoRA plugin (Hu et al. 2021): it is to register the "lora" <see cref="Peft.Abstractions.Methods.IPeftMethod"/>.</summary>
public sealed class LoraPlugin : IPeftPlugin
{
    public string Name => "lora";

    public string Description => "LoRA: low-rank adapters on linear layers (method not implemented yet)";

    public void ConfigureServices(IServiceCollection services)
    {
        // TODO: services.AddSingleton<IPeftMethod, LoraMethod>(); once the LoRA method exists.
    }
}
