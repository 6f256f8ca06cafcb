using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.TestPlugins.Throwing;

/// <summary>Test plugin whose ConfigureServices fails.</summary>
public sealed class ThrowingPlugin : IPeftPlugin
{
    public string Name => "throwing";
    public string Description => "test plugin that fails in ConfigureServices";
    public void ConfigureServices(IServiceCollection services) => throw new InvalidOperationException("deliberate failure in ThrowingPlugin");
}
