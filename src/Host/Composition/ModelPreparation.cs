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
    /// <summary>
    /// The dtype <c>peft train</c> reads the folder's weights into, before composition: bfloat16 when
    /// <c>base_dtype = "bfloat16"</c> and every weight the run trains will be a new (fp32) parameter of the method,
    /// so the frozen base is read straight into bf16 storage and never exists as an fp32 copy (a 128,256 × d
    /// embedding included). Otherwise fp32, and <see cref="Apply"/> re-stores the frozen weights after composition:
    /// <list type="bullet">
    /// <item>no method (full fine-tuning), or hooks (LISA declares the base's own weights trainable): base weights train, in fp32;</item>
    /// <item>a quantizer on a folder not stored in bf16: the quantizer reads the fp32 values, as without base_dtype.</item>
    /// </list>
    /// On a bf16 folder reading in bf16 is exact (the same values an fp32 read holds).
    /// </summary>
    public static ScalarType LoadDtype(TrainingOptions options, CompositionPlan plan, ScalarType? folderDtype)
    {
        if (options.BaseDtype != "bfloat16" || plan.Method is null || plan.Hooks.Count > 0) return ScalarType.Float32;
        if (plan.Quantizer is not null && folderDtype != ScalarType.BFloat16) return ScalarType.Float32;
        return ScalarType.BFloat16;
    }

    public static void Apply(ICausalLanguageModel model, IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Parameter)> trainable, TrainingOptions options)
    {
        // A parameter that trains is fp32 (the optimizer's update of a bf16 weight would round away); a base weight
        // read in bf16 (LoadDtype) that a method then trains cannot be re-stored without its references going stale.
        foreach (var (name, p) in trainable)
            if (p.is_floating_point() && p.dtype != ScalarType.Float32)
                throw new PeftConfigurationException("training:base_dtype", options.BaseDtype,
                    $"the trainable parameter '{name}' is stored in {p.dtype} (the method trains a base weight read in bf16); use base_dtype float32");
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
