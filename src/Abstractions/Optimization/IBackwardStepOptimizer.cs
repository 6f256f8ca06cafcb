namespace Peft.Abstractions.Optimization;

/// <summary>What the training loop tells an optimizer before the backward passes of a step.</summary>
/// <param name="LearningRate">The step's learning rate (after the schedule).</param>
/// <param name="MicroBatches">Backward passes this step (gradient_accumulation_steps).</param>
/// <param name="MaxGradNorm">The global-norm clipping threshold (0 = off).</param>
public sealed record BackwardStepInfo(double LearningRate, int MicroBatches, double MaxGradNorm);

/// <summary>
/// An optimizer that is told about each step before its backward passes: one that updates some parameters DURING the backward pass, as soon as each gradient is ready, and frees
/// that gradient at once (GaLore's layer-wise mode), so the full set of gradients never exists. The training loop
/// calls <see cref="BeginStep"/> before the step's forward/backward passes; <see cref="IPeftOptimizer.Step"/>
/// afterwards updates whatever still holds a gradient. Such parameters have no <c>.grad</c> when the loop clips, so
/// an implementation refuses settings it cannot honour (gradient accumulation, global-norm clipping) by throwing
/// <see cref="PeftConfigurationException"/> naming the key.
/// </summary>
public interface IBackwardStepOptimizer : IPeftOptimizer
{
    void BeginStep(BackwardStepInfo step);

    /// <summary>The most bytes of gradient (parameter .grad tensors plus gradients held by the optimizer) alive at once so far.</summary>
    long PeakGradientBytes { get; }
}
