using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Optimization;
using TorchSharp.Modules;

namespace Peft.Host.Optimization;

/// <summary>The host's built-in optimizer, <c>"Optimizer": { "Name": "adamw" }</c>: plain AdamW on every trainable parameter.</summary>
public sealed class AdamWStrategy : IOptimizerStrategy
{
    public const string StrategyName = "adamw";

    public string Name => StrategyName;

    public string Description => "AdamW (torch.optim.AdamW semantics: decoupled weight decay, bias-corrected moments), fp32 state";

    /// <summary>AdamW takes its hyper-parameters from <see cref="OptimizerSettings"/>; its own section accepts only "name".</summary>
    public IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options)
    {
        OptionsBinding.Bind<AdamWOptions>(options, "name");
        return new AdamWOptimizer(parameters, settings);
    }

    /// <summary>
    /// For <c>peft plan</c>: m and v shaped like each parameter in the optimizer's dtype, plus the 8-byte step
    /// counter per parameter (what <see cref="AdamWOptimizer.StateBytes"/> reports after a step).
    /// </summary>
    public Abstractions.Memory.OptimizerMemoryEstimate? EstimateMemory(IReadOnlyList<Abstractions.Memory.PlannedParameter> parameters, IConfiguration options)
    {
        OptionsBinding.Bind<AdamWOptions>(options, "name");
        return new(parameters.Sum(p => 2 * p.Elements * p.ElementBytes + sizeof(long)));
    }

    /// <summary>No keys of its own: betas, epsilon, weight decay and learning rate come from the <c>training</c> section.</summary>
    public sealed class AdamWOptions;
}
