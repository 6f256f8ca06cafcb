using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Quantization;

namespace Peft.Plugins.QLora;

/// <summary>
/// Entry point of the QLoRA plugin (Dettmers et al. 2023): registers the "nf4" (default QLoRA base) and "fp4"
/// <see cref="IQuantizer"/>s. QLoRA itself is composed: <c>"quantization": { "name": "nf4" }</c> plus <c>"method": { "name": "lora" }</c>.
/// </summary>
public sealed class QLoraPlugin : IPeftPlugin
{
    public string Name => "qlora";

    public string Description => "QLoRA: 4-bit NF4 / FP4 quantized frozen base (bitsandbytes format, double quantization)";

    public void ConfigureServices(IServiceCollection services)
    {
        services.AddSingleton<IQuantizer, Nf4Quantizer>();
        services.AddSingleton<IQuantizer, Fp4Quantizer>();
        services.AddSingleton<IQuantizer, Int8Quantizer>();
    }
}
