using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Plugins;

namespace Peft.TestPlugins.Clash;

/// <summary>Test plugin with a unique plugin name whose method name collides with the Sample plugin's.</summary>
public sealed class ClashPlugin : IPeftPlugin
{
    public string Name => "clash";
    public string Description => "test plugin registering a method named like the sample plugin's";
    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, ClashingMethod>();
}

public sealed class ClashingMethod : IPeftMethod
{
    public string Name => "sample-method";
    public string? PeftType => null;
    public string Description => "a second method named sample-method";
    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) => throw new NotSupportedException("test plugin");
    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig) => null;
}
