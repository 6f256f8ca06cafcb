using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Abstractions.Plugins;

namespace Peft.TestPlugins.Planned;

/// <summary>
/// Test plugin: a third-party method the host has never heard of, with its own memory estimate, so the tests can
/// check that <c>peft plan</c> plans it without host changes.
/// </summary>
public sealed class PlannedPlugin : IPeftPlugin
{
    public string Name => "planned";
    public string Description => "test plugin: a method that only plans (one trainable scale per output of each decoder projection)";
    public void ConfigureServices(IServiceCollection services) => services.AddSingleton<IPeftMethod, ScaleVectorMethod>();
}

/// <summary>"scale-vector": one trainable fp32 scale per output feature of every decoder projection (the estimate only).</summary>
public sealed class ScaleVectorMethod : IPeftMethod
{
    public string Name => "scale-vector";
    public string? PeftType => null;
    public string Description => "test method with its own EstimateMemory";
    public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) => throw new NotSupportedException("test plugin: plans only");
    public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig) => null;

    public MemoryEstimate? EstimateMemory(ModelShape shape, IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        long count = slots.Where(s => s.IsDecoderProjection).Sum(s => s.OutFeatures);
        return new MemoryEstimate(count, count * 4, count * 4, 0) { TensorCount = slots.Count(s => s.IsDecoderProjection) };
    }
}
