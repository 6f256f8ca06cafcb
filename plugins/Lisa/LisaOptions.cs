using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Plugins.Lisa;

/// <summary>
/// The <c>lisa</c> hook's entry in <c>"hooks": [ { "name": "lisa", "k": 2, "interval": 20 } ]</c>
/// (LMFlow's <c>lisa_activated_layers</c> and <c>lisa_interval_steps</c>).
/// </summary>
public sealed class LisaOptions : IValidatableOptions
{
    /// <summary>Decoder layers trained in each interval (γ in the paper). 1 ≤ k ≤ number of layers.</summary>
    [ConfigurationKeyName("k")] public int K { get; set; } = 2;

    /// <summary>Optimizer steps between two samplings (K in the paper); the first sampling is at step 0.</summary>
    [ConfigurationKeyName("interval")] public int Interval { get; set; } = 20;

    /// <summary>
    /// What trains in every interval besides the sampled layers: <c>"outside_layers"</c> (default: every parameter
    /// outside the decoder layers, i.e. the embeddings, the final norm and the LM head, as in the paper),
    /// <c>"none"</c>, or a list of exact HF parameter names (<c>["lm_head.weight"]</c>).
    /// </summary>
    [ConfigurationKeyName("always_trainable"), SingleValueAllowed] public List<string>? AlwaysTrainable { get; set; }

    public const string OutsideLayers = "outside_layers";
    public const string None = "none";

    /// <summary>The single-value form of <see cref="AlwaysTrainable"/> ("outside_layers" or "none"), read from the section by the factory.</summary>
    public string? AlwaysTrainableKeyword { get; private set; } = OutsideLayers;

    internal void ReadKeyword(IConfiguration section)
    {
        var value = section.GetSection("always_trainable");
        if (value.Value is { } single && !value.GetChildren().Any())
        {
            AlwaysTrainableKeyword = single.Trim();
            AlwaysTrainable = null;
        }
        else if (AlwaysTrainable is not null) AlwaysTrainableKeyword = null;
    }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (K < 1) yield return ("k", K, "must be at least 1 (the number of decoder layers trained in each interval)");
        if (Interval < 1) yield return ("interval", Interval, "must be at least 1 (optimizer steps between two samplings)");
        if (AlwaysTrainableKeyword is not null and not OutsideLayers and not None)
            yield return ("always_trainable", AlwaysTrainableKeyword, $"must be \"{OutsideLayers}\", \"{None}\" or a list of parameter names");
        if (AlwaysTrainable is { } names && names.Any(string.IsNullOrWhiteSpace))
            yield return ("always_trainable", string.Join(", ", names), "a parameter name is empty");
    }
}
