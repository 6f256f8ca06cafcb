using Peft.Abstractions;
using Peft.Host.Model;
using Peft.Host.Training;
using static TorchSharp.torch;

namespace Peft.Host.Composition;

/// <summary>
/// The last step of composition before the optimizer: how the composed model is stored and run for training
/// (<c>training:base_dtype</c>, <c>training:activation_checkpointing</c>). Done here, once the trainable
/// parameters are known, so the trainer only trains.
/// <list type="bullet">
/// <item><c>base_dtype = "bfloat16"</c>: every frozen floating-point weight is re-stored in bfloat16 through
///   <see cref="IBaseWeightsCaster"/> (trainable parameters keep their storage and identity; layers still compute in float32);</item>
/// <item><c>activation_checkpointing = true</c>: decoder layers recompute their activations in backward (<see cref="IActivationCheckpointing"/>).</item>
/// </list>
/// </summary>
public static class ModelPreparation
{
    public static void Apply(ICausalLanguageModel model, IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Parameter)> trainable, TrainingOptions options)
    {
        if (options.BaseDtype == "bfloat16")
        {
            if (model is not IBaseWeightsCaster caster)
                throw new PeftConfigurationException("training:base_dtype", options.BaseDtype, "this model cannot store its frozen weights in bfloat16");
            var names = trainable.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
            caster.CastFrozenWeights(ScalarType.BFloat16, names.Contains);
        }
        if (options.ActivationCheckpointing)
        {
            if (model is not IActivationCheckpointing checkpointing)
                throw new PeftConfigurationException("training:activation_checkpointing", "true", "this model does not support activation checkpointing");
            checkpointing.ActivationCheckpointing = true;
        }
    }
}
