using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using TorchSharp;
using TorchSharp.Modules;

namespace Peft.Abstractions.Training;

/// <summary>Creates a per-run training hook from its configuration section (<c>"Hooks": [ { "Name": "lisa", ... } ]</c>).</summary>
public interface ITrainingHookFactory
{
    string Name { get; }
    string Description { get; }
    ITrainingHook Create(IConfiguration options);

    /// <summary>For <c>peft plan</c>: how the hook limits what trains at once (LISA: k active layers); null if it does not.</summary>
    Memory.HookMemoryEstimate? EstimateMemory(ModelShape shape, IConfiguration options) => null;
}

/// <summary>
/// Called by the training loop around each optimizer step. LISA uses it to choose which decoder layers train
/// (by setting <c>requires_grad</c>) and to free the optimizer state of layers it switches off.
/// </summary>
public interface ITrainingHook
{
    void OnTrainingStart(TrainingContext context) { }
    void OnStepStart(TrainingContext context) { }
    void OnStepEnd(TrainingContext context) { }

    /// <summary>
    /// The hook's state for checkpoints (its random generator, what it activated...), as JSON; null when it has none.
    /// The trainer writes it into each checkpoint under the hook's name and hands it back through
    /// <see cref="LoadState"/> on resume, before <see cref="OnTrainingStart"/>.
    /// </summary>
    System.Text.Json.Nodes.JsonObject? SaveState() => null;

    /// <summary>Restore what <see cref="SaveState"/> returned (resume).</summary>
    void LoadState(System.Text.Json.Nodes.JsonObject state) { }
}

/// <summary>What a hook sees of the run.</summary>
public sealed class TrainingContext
{
    public required IPeftModel Model { get; init; }
    public required IPeftOptimizer Optimizer { get; init; }

    /// <summary>Every parameter the optimizer may update (hooks switch <c>requires_grad</c> among these).</summary>
    public required IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters { get; init; }

    /// <summary>Optimizer step about to run / just run (0-based).</summary>
    public int Step { get; set; }
    public int TotalSteps { get; init; }

    /// <summary>Seed of the run; hooks derive their own deterministic random streams from it and the step.</summary>
    public int Seed { get; init; }
}
