using Peft.Abstractions.Methods;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using Peft.Host.Optimization;
using Peft.Host.Plugins;

namespace Peft.Host.Planning;

/// <summary>Where the planner finds the components a plan names: the loaded plugins (or nothing), and the host's AdamW.</summary>
public interface IPlanComponentSource
{
    IPeftMethod? Method(string name);
    IQuantizer? Quantizer(string name);
    IOptimizerStrategy? OptimizerStrategy(string name);
    ITrainingHookFactory? Hook(string name);
}

/// <summary>No plugins: methods and quantizers come from the planner's formulas, AdamW is the host's; GaLore and LISA plan themselves, so they need their plugins.</summary>
public sealed class NoPluginComponents : IPlanComponentSource
{
    public static readonly NoPluginComponents Instance = new();
    static readonly AdamWStrategy AdamW = new();
    public IPeftMethod? Method(string name) => null;
    public IQuantizer? Quantizer(string name) => null;
    public IOptimizerStrategy? OptimizerStrategy(string name) => string.Equals(name, AdamWStrategy.StrategyName, StringComparison.OrdinalIgnoreCase) ? AdamW : null;
    public ITrainingHookFactory? Hook(string name) => null;
}

/// <summary>The components the host and its plugins registered (<see cref="PluginCatalog"/>).</summary>
public sealed class CatalogComponents(PluginCatalog catalog) : IPlanComponentSource
{
    static bool Has(IReadOnlyCollection<string> names, string name) => names.Contains(name, StringComparer.OrdinalIgnoreCase);
    public IPeftMethod? Method(string name) => Has(catalog.MethodNames, name) ? catalog.GetMethod(name) : null;
    public IQuantizer? Quantizer(string name) => Has(catalog.QuantizerNames, name) ? catalog.GetQuantizer(name) : null;
    public IOptimizerStrategy? OptimizerStrategy(string name) => Has(catalog.OptimizerStrategyNames, name) ? catalog.GetOptimizerStrategy(name) : null;
    public ITrainingHookFactory? Hook(string name) => Has(catalog.HookNames, name) ? catalog.GetHookFactory(name) : null;
}
