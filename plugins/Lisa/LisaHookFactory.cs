using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Training;

namespace Peft.Plugins.Lisa;

/// <summary>Creates the <c>lisa</c> hook from its entry of the <c>hooks</c> list (options bound strictly, errors name key and value).</summary>
public sealed class LisaHookFactory : ITrainingHookFactory
{
    public const string HookName = "lisa";

    public string Name => HookName;

    public string Description => "LISA: train k sampled decoder layers (plus embeddings, norm, head) per interval; frees frozen layers' optimizer state";

    /// <summary>
    /// For <c>peft plan</c>: k of the model's decoder layers hold gradients and optimizer state at once; under a PEFT
    /// method the active layers train their own weights (their adapters frozen, the other layers' adapters training),
    /// and <c>always_trainable</c> (default: everything outside the decoder layers) trains throughout unless "none".
    /// </summary>
    public Peft.Abstractions.Memory.HookMemoryEstimate? EstimateMemory(Peft.Abstractions.Model.ModelShape shape, IConfiguration options)
    {
        var path = options is IConfigurationSection s ? s.Path : "hooks:0";
        var bound = OptionsBinding.Bind<LisaOptions>(options, "name");
        bound.ReadKeyword(options);
        foreach (var (key, value, problem) in bound.Validate())
            throw new PeftConfigurationException($"{path}:{key}", value?.ToString(), problem);
        if (bound.K > shape.NumHiddenLayers)
            throw new PeftConfigurationException($"{path}:k", bound.K.ToString(System.Globalization.CultureInfo.InvariantCulture), $"must be in [1, {shape.NumHiddenLayers}] (the model's layers)");
        bool outside = bound.AlwaysTrainableKeyword != LisaOptions.None;
        return new Peft.Abstractions.Memory.HookMemoryEstimate(bound.K, TrainsLayerWeights: true, TrainsOutsideLayers: outside);
    }

    public ITrainingHook Create(IConfiguration options)
    {
        var path = options is IConfigurationSection s ? s.Path : "hooks:0";
        var bound = OptionsBinding.Bind<LisaOptions>(options, "name");
        bound.ReadKeyword(options);
        foreach (var (key, value, problem) in bound.Validate())
            throw new PeftConfigurationException($"{path}:{key}", value?.ToString(), problem);
        return new LisaHook(bound, path);
    }
}
