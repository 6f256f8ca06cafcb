using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using TorchSharp.Modules;

namespace Peft.TestPlugins.Sample;

/// <summary>
/// Test plugin: registers one service of each kind the host indexes, so the tests can check provenance,
/// lookups by name, and that types crossing the plugin boundary are the host's.
/// </summary>
public sealed class SamplePlugin : IPeftPlugin
{
    public string Name => "sample";
    public string Description => "test plugin registering one method, quantizer, optimizer strategy and hook";

    /// <summary>The TorchSharp <c>torch</c> type as this plugin sees it (must be the host's).</summary>
    public static Type TorchType => typeof(TorchSharp.torch);

    public void ConfigureServices(IServiceCollection services)
    {
        services.AddSingleton<IPeftMethod, SampleMethod>();
        services.AddSingleton<IQuantizer, SampleQuantizer>();
        services.AddSingleton<IOptimizerStrategy, SampleOptimizerStrategy>();
        services.AddSingleton<ITrainingHookFactory, SampleHookFactory>();
        services.AddSingleton<SampleHelper>(); // not indexed: a private helper service
    }
}

public sealed class SampleHelper;

public sealed class SampleMethod : IPeftMethod
{
    public string Name => "sample-method";
    public string? PeftType => null;
    public string Description => "test method";
    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) => throw new NotSupportedException("test plugin");
    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig) => null;
}

public sealed class SampleQuantizer : IQuantizer
{
    public string Name => "sample-quantizer";
    public string Description => "test quantizer";
    public double BitsPerParameter(IConfiguration options) => 4.5;
    public ILinearLayer Quantize(string moduleName, ILinearLayer layer, IConfiguration options) => throw new NotSupportedException("test plugin");
}

public sealed class SampleOptimizerStrategy : IOptimizerStrategy
{
    public string Name => "sample-optimizer";
    public string Description => "test optimizer strategy";
    public IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options) =>
        throw new NotSupportedException("test plugin");
}

/// <summary>Binds its options with the shared strict binder, so a bad key surfaces as the host's exception type.</summary>
public sealed class SampleHookFactory : ITrainingHookFactory
{
    public string Name => "sample-hook";
    public string Description => "test hook";

    public ITrainingHook Create(IConfiguration options) => new SampleHook(OptionsBinding.Bind<SampleHookOptions>(options, "name").EveryNSteps);

    public sealed class SampleHookOptions
    {
        [ConfigurationKeyName("every_n_steps")] public int EveryNSteps { get; set; } = 1;
    }

    public sealed record SampleHook(int EveryNSteps) : ITrainingHook;
}
