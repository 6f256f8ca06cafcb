using Peft.Abstractions.Optimization;
using Peft.Abstractions.Training;
using Peft.Host.Data;
using Peft.Host.Model;
using TorchSharp.Modules;

namespace Peft.Host.Training;

/// <summary>
/// Everything one training run needs. The caller (the <c>peft train</c> command) builds the model, attaches the
/// method (which decides the trainable parameters and freezes the rest), creates the optimizer through its
/// strategy and the hooks through their factories; the trainer knows nothing of plugins.
/// </summary>
public sealed class TrainingRun
{
    public required ICausalLanguageModel Model { get; init; }

    /// <summary>
    /// Every parameter the optimizer may update, by unique name (hooks may switch requires_grad among them).
    /// Checkpoints store exactly these. Parameters outside the list are frozen and never change.
    /// </summary>
    public required IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters { get; init; }

    public required IPeftOptimizer Optimizer { get; init; }
    public IReadOnlyList<ITrainingHook> Hooks { get; init; } = [];
    public required TrainingDataSet Data { get; init; }
    public required TrainingOptions Options { get; init; }

    /// <summary>The run's output folder (created if missing).</summary>
    public required string OutputDirectory { get; init; }

    /// <summary>Writes the result (adapter files or full weights) and checkpoint extras.</summary>
    public required ITrainingOutput Output { get; init; }

    public ITrainingProgress Progress { get; init; } = TrainingProgress.Silent;

    /// <summary>The ranks of a data-parallel run (<c>mpiexec -n N peft train</c>); a single process by default.</summary>
    public Distributed.DataParallelism Parallel { get; init; } = Distributed.DataParallelism.Single;

    /// <summary>
    /// The held-out loss before training (the command's "step 0" baseline), when it measured one: logged as the
    /// step-0 evaluation line of metrics.jsonl, so loss_curve.png starts from it.
    /// </summary>
    public EvalRecord? BaselineEvaluation { get; init; }

    /// <summary>Draw loss_curve.png at the end (ScottPlot).</summary>
    public bool WriteLossCurve { get; init; } = true;
}

/// <summary>One optimizer step: its 1-based number, mean loss over its counted tokens, learning rate, gradient norm before clipping.</summary>
public sealed record StepRecord(int Step, double Loss, double LearningRate, double GradNorm, int CountedTokens);

/// <summary>An evaluation after step <see cref="Step"/>: mean loss over the counted tokens of the held-out batches.</summary>
public sealed record EvalRecord(int Step, double Loss, long CountedTokens);

public sealed class TrainingResult
{
    /// <summary>Steps run in this invocation (after a resume: only the new ones).</summary>
    public required IReadOnlyList<StepRecord> Steps { get; init; }
    public required IReadOnlyList<EvalRecord> Evaluations { get; init; }
    public required int StartStep { get; init; }
    public required int FinalStep { get; init; }
    public required int TotalSteps { get; init; }

    /// <summary>True when cancellation stopped the run before <see cref="TotalSteps"/> (a checkpoint was written).</summary>
    public required bool Interrupted { get; init; }
    public required TrainingSummary Summary { get; init; }
}

/// <summary>Training cannot go on (a non-finite loss, no parameter requiring grad...). The message names the step.</summary>
public sealed class TrainingException(string message) : Exception(message);
