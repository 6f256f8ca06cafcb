using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Abstractions.Optimization;

/// <summary>
/// Builds the optimizer that updates the trainable parameters: plain AdamW (built into the host), GaLore
/// (low-rank projected Adam), 8-bit states... The training loop only talks to <see cref="IPeftOptimizer"/>.
/// </summary>
public interface IOptimizerStrategy
{
    /// <summary>Name used in configuration (<c>"Optimizer": { "Name": "galore" }</c>).</summary>
    string Name { get; }
    string Description { get; }

    IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options);

    /// <summary>
    /// Build the optimizer knowing the model: strategies that treat parameters by their role (GaLore projects the
    /// 2-D weights of the attention and MLP slots, <see cref="IPeftModel.LinearSlots"/>) override this. The host's
    /// composer calls this overload; the default ignores the model.
    /// </summary>
    IPeftOptimizer Create(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options)
        => Create(parameters, settings, options);

    /// <summary>
    /// True when this strategy trains the weights of a quantized base itself (Q-GaLore: <c>quantization: int8</c> +
    /// <c>optimizer: galore</c>, no method). Only then does the host accept a quantizer without a PEFT method; every
    /// other strategy needs a method to wrap the quantized layers (a quantized base cannot be fully fine-tuned by
    /// plain AdamW). The GaLore issue defines how such a strategy reaches the quantized weights.
    /// </summary>
    bool TrainsQuantizedWeights => false;

    /// <summary>
    /// For <c>peft plan</c>: the state, projection and gradient memory this strategy would hold for
    /// <paramref name="parameters"/> (null if unknown; the planner then uses its own formula when it has one).
    /// </summary>
    Memory.OptimizerMemoryEstimate? EstimateMemory(IReadOnlyList<Memory.PlannedParameter> parameters, IConfiguration options) => null;
}

/// <summary>Hyper-parameters every strategy receives from the training loop.</summary>
public sealed record OptimizerSettings(double LearningRate, double WeightDecay, double Beta1 = 0.9, double Beta2 = 0.999, double Epsilon = 1e-8);

public interface IPeftOptimizer : IDisposable
{
    /// <summary>Apply one update with the given learning rate to every parameter that has a gradient.</summary>
    void Step(double learningRate);

    /// <summary>Drop all gradients.</summary>
    void ZeroGrad();

    /// <summary>Free the state kept for these parameters (LISA frees layers it deactivates).</summary>
    void ReleaseState(IEnumerable<string> parameterNames);

    /// <summary>Bytes of optimizer state currently held.</summary>
    long StateBytes { get; }

    /// <summary>State for checkpoints: tensors by name (aliases, not copies) plus scalar counters.</summary>
    IReadOnlyDictionary<string, Tensor> GetState();

    void LoadState(IReadOnlyDictionary<string, Tensor> state);
}
