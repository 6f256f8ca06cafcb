using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;

namespace Peft.Abstractions.Quantization;

/// <summary>
/// Which linear slots a quantizer replaces, from the <c>quantization</c> section's <c>target_modules</c> and
/// <c>skip_modules</c> lists. Default: every projection inside the decoder layers
/// (<see cref="LinearSlot.IsDecoderProjection"/>); embeddings, norms and the output head stay full precision.
/// An entry matches a slot whose short name (<c>q_proj</c>) or full name (<c>model.layers.0.self_attn.q_proj</c>)
/// equals it; a target entry may name the output head (<c>lm_head</c>). An entry that matches no slot is an error.
/// Quantizer options classes accept these two keys (derive from <see cref="QuantizerTargetOptions"/>).
/// </summary>
public static class QuantizationTargets
{
    public const string TargetModulesKey = "target_modules";
    public const string SkipModulesKey = "skip_modules";

    public static IReadOnlyList<LinearSlot> Select(IReadOnlyList<LinearSlot> slots, IConfiguration options)
    {
        var path = options is IConfigurationSection s ? s.Path + ":" : "";
        var targets = ReadList(options, TargetModulesKey, path);
        var skips = ReadList(options, SkipModulesKey, path);
        CheckMatches(slots, targets, path + TargetModulesKey);
        CheckMatches(slots, skips, path + SkipModulesKey);
        var chosen = slots.Where(slot => targets is null ? slot.IsDecoderProjection : Matches(slot, targets))
                          .Where(slot => skips is null || !Matches(slot, skips))
                          .ToList();
        if (chosen.Count == 0)
            throw new PeftConfigurationException(path + (targets is null ? SkipModulesKey : TargetModulesKey),
                                                 "[" + string.Join(", ", (targets ?? skips)!) + "]", "leaves no linear layer to quantize");
        return chosen;
    }

    static bool Matches(LinearSlot slot, IReadOnlyList<string> entries) =>
        entries.Any(e => string.Equals(e, slot.ShortName, StringComparison.Ordinal) || string.Equals(e, slot.Name, StringComparison.Ordinal));

    static void CheckMatches(IReadOnlyList<LinearSlot> slots, IReadOnlyList<string>? entries, string key)
    {
        if (entries is null) return;
        foreach (var e in entries)
            if (!slots.Any(s => Matches(s, [e])))
                throw new PeftConfigurationException(key, e,
                    $"matches no linear layer (use a short name such as {string.Join(", ", slots.Select(s => s.ShortName).Distinct().Take(8))} or a full module name)");
    }

    static IReadOnlyList<string>? ReadList(IConfiguration options, string key, string path)
    {
        var section = options.GetSection(key);
        if (!section.Exists()) return null;
        if (section.Value is { } single) return [single];   // a single name is a one-entry list
        var list = section.GetChildren().Select(c => c.Value ?? throw new PeftConfigurationException(c.Path, null, "entries must be module names")).ToList();
        if (list.Any(string.IsNullOrWhiteSpace))
            throw new PeftConfigurationException(path + key, "[" + string.Join(", ", list) + "]", "entries must be non-empty module names");
        return list;
    }
}

/// <summary>Base of a quantizer's options class: accepts the target/skip lists the host reads (<see cref="QuantizationTargets"/>).</summary>
public class QuantizerTargetOptions
{
    [ConfigurationKeyName(QuantizationTargets.TargetModulesKey), Configuration.SingleValueAllowed]
    public List<string>? TargetModules { get; set; }

    [ConfigurationKeyName(QuantizationTargets.SkipModulesKey), Configuration.SingleValueAllowed]
    public List<string>? SkipModules { get; set; }
}
