using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Plugins.GaLore;

/// <summary>Where the projector sits (official <c>galore_torch</c> <c>proj_type</c>). G is the (m, n) gradient.</summary>
public enum GaLoreProjectionType
{
    /// <summary>One-sided, projector on the smaller side: m ≥ n → G·Vrᵀ (m, r); m &lt; n → Urᵀ·G (r, n). The default.</summary>
    Std,
    /// <summary>One-sided, projector on the larger side: m ≥ n → Urᵀ·G (r, n); m &lt; n → G·Vrᵀ (m, r).</summary>
    ReverseStd,
    /// <summary>Always G·Vrᵀ (m, r).</summary>
    Right,
    /// <summary>Always Urᵀ·G (r, n).</summary>
    Left,
    /// <summary>Two-sided Urᵀ·G·Vrᵀ (r, r) (the seed's form; not the paper's default).</summary>
    Full,
}

/// <summary>
/// GaLore options, under <c>optimizer</c> with the official names:
/// <c>{"name": "galore", "rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std",
/// "target_modules": ["q_proj", ...], "layerwise": false}</c>. Learning rate, betas, ε and weight decay come
/// from the <c>training</c> section like every optimizer's.
/// </summary>
public sealed class GaLoreOptions : IValidatableOptions
{
    /// <summary>Projection rank r (capped per matrix by min(m, n)). Paper default 128.</summary>
    [ConfigurationKeyName("rank")] public int Rank { get; set; } = 128;

    /// <summary>Steps between projector refreshes (SVD of the current gradient); the first is at step 0. Paper default 200.</summary>
    [ConfigurationKeyName("update_proj_gap")] public int UpdateProjGap { get; set; } = 200;

    /// <summary>α, multiplies the projected-back update. Paper default 0.25.</summary>
    [ConfigurationKeyName("scale")] public double Scale { get; set; } = 0.25;

    /// <summary>std (default), reverse_std, left, right, full.</summary>
    [ConfigurationKeyName("proj_type")] public string ProjType { get; set; } = "std";

    /// <summary>
    /// Short names (<c>q_proj</c>) or full names of the linear slots whose 2-D weights GaLore projects. Default: every
    /// attention and MLP projection of the decoder layers. Other trainable parameters get plain AdamW.
    /// </summary>
    [ConfigurationKeyName("target_modules"), SingleValueAllowed] public List<string>? TargetModules { get; set; }

    /// <summary>Update each weight during the backward pass as soon as its gradient is ready (no full gradient set).</summary>
    [ConfigurationKeyName("layerwise")] public bool Layerwise { get; set; }

    public GaLoreProjectionType ProjectionType => ParseProjType(ProjType)!.Value;

    public static GaLoreProjectionType? ParseProjType(string value) => value switch
    {
        "std" => GaLoreProjectionType.Std,
        "reverse_std" => GaLoreProjectionType.ReverseStd,
        "right" => GaLoreProjectionType.Right,
        "left" => GaLoreProjectionType.Left,
        "full" => GaLoreProjectionType.Full,
        _ => null,
    };

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (Rank < 1) yield return ("rank", Rank, "must be >= 1");
        if (UpdateProjGap < 1) yield return ("update_proj_gap", UpdateProjGap, "must be >= 1");
        if (!double.IsFinite(Scale) || Scale <= 0) yield return ("scale", Scale, "must be a positive number");
        if (ParseProjType(ProjType) is null) yield return ("proj_type", ProjType, "must be std, reverse_std, left, right or full");
        if (TargetModules is { Count: 0 }) yield return ("target_modules", "[]", "is empty (leave it out for the attention and MLP projections)");
    }

    /// <summary>Bind and validate an <c>optimizer</c> section (its "name" key belongs to the host).</summary>
    public static GaLoreOptions FromConfiguration(IConfiguration section)
    {
        var options = OptionsBinding.Bind<GaLoreOptions>(section, "name");
        var single = section.GetSection("target_modules");
        if (single.Value is { Length: > 0 } one) options.TargetModules = [one];
        return options;
    }
}
