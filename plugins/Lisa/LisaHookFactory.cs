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
