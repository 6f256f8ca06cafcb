using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Plugins;

namespace Peft.TestPlugins.OldContracts;

/// <summary>A plugin compiled against another release of Peft.Abstractions (see the project file); it registers nothing.</summary>
public sealed class OldContractsPlugin : IPeftPlugin
{
    public string Name => "oldcontracts";
    public string Description => "test plugin built against another Peft.Abstractions version";
    public void ConfigureServices(IServiceCollection services) { }
}
