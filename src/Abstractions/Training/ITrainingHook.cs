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
    /// <summary>
    /// Parameters this hook may switch on that the method left frozen (LISA under LoRA: the full weights of every
    /// decoder layer, and the embeddings, final norm and head). The composer calls it once, after the method is
    /// attached and before the optimizer is built, and adds what is not trainable yet to the run's trainable set,
    /// so the optimizer, checkpoints and <c>base_dtype</c> treat those parameters as trainable; they stay frozen until
    /// the hook sets <c>requires_grad</c> (from <see cref="OnTrainingStart"/> on). The names are the model's
    /// (<see cref="IPeftModel.NamedParameters"/>). <paramref name="adapterParameters"/> are the parameters the method
    /// added (an adapter's; empty under full fine-tuning, where every parameter is trainable already), so a hook can
    /// tell a layer's own weights from its adapter without parsing names. Default: nothing.
    /// </summary>
    IReadOnlyList<(string Name, Parameter Parameter)> DeclareTrainable(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> adapterParameters) => [];

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

    /// <summary>
    /// Writes one line to the run's <c>metrics.jsonl</c>: the trainer puts <c>"step"</c> (the 1-based step being run,
    /// i.e. <see cref="Step"/> + 1) in front of the hook's fields (LISA: <c>{"step": 21, "hook": "lisa", "active_layers": [1, 4]}</c>).
    /// A no-op outside the trainer.
    /// </summary>
    public Action<System.Text.Json.Nodes.JsonObject> Record { get; init; } = _ => { };
}
