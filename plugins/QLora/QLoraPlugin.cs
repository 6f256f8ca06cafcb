using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.Plugins.QLora;

/// <summary>Entry point of the QLoRA plugin (Dettmers et al. 2023): it is to register the "nf4" <see cref="Peft.Abstractions.Quantization.IQuantizer"/>.</summary>
public sealed class QLoraPlugin : IPeftPlugin
{
    public string Name => "qlora";

    public string Description => "QLoRA: 4-bit NF4 quantization of the frozen base (quantizer not implemented yet)";

    public void ConfigureServices(IServiceCollection services)
    {
        // TODO: services.AddSingleton<IQuantizer, Nf4Quantizer>(); once the NF4 quantizer exists.
        services.AddSingleton<Peft.Abstractions.Quantization.IQuantizer, Int8Quantizer>();
    }
}
