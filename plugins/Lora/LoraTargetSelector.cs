using System.Text.RegularExpressions;
using Peft.Abstractions;
using Peft.Abstractions.Model;

namespace Peft.Plugins.Lora;

/// <summary>One linear layer a LoRA adapter will wrap, with the rank and alpha that apply to it.</summary>
public sealed record LoraTarget(string ModuleName, int Rank, double Alpha);

/// <summary>
/// Chooses the linear slots a LoRA adapter wraps, following HF PEFT (<c>check_target_module_exists</c>,
/// <c>get_pattern_key</c>). It reads what it needs from the model's <see cref="LinearSlot"/>s (short name, layer
/// index, kind) and never parses a module name:
/// <list type="bullet">
/// <item>target_modules list: a slot matches when its name equals an entry, its short name equals an entry, or
/// its name ends with "." + entry (PEFT's suffix rule, for entries such as "self_attn.q_proj"); then, if
/// layers_to_transform is set (and the name was not an exact entry), the slot's layer index must be listed
/// (a slot without a layer index, such as the output head, is then excluded).</item>
/// <item>target_modules string: a regex that must match the full module name (layers_to_transform not allowed).</item>
/// <item>"all-linear": the distinct short names of every slot but the output head (<see cref="LinearKind.OutputHead"/>), used as a list.</item>
/// <item>rank_pattern / alpha_pattern: the first key (in insertion order) for which <c>(.*\.)?(key)$</c> matches
/// from the start of the module name overrides r / lora_alpha.</item>
/// </list>
/// </summary>
public static class LoraTargetSelector
{
    static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    /// <summary>The targets among <paramref name="slots"/>, in model order. Throws when nothing matches.</summary>
    public static IReadOnlyList<LoraTarget> Select(LoraOptions options, IReadOnlyList<LinearSlot> slots)
    {
        var list = ResolveTargetList(options, slots);
        var targets = new List<LoraTarget>();
        foreach (var slot in slots)
        {
            bool found = list is null ? FullMatch(options.TargetModulesRegex!, slot.Name) : MatchesList(list, slot, options.LayersToTransform);
            if (!found) continue;
            targets.Add(new LoraTarget(slot.Name, RankFor(options, slot.Name), AlphaFor(options, slot.Name)));
        }
        if (targets.Count == 0)
        {
            var layers = options.LayersToTransform is null ? "" : $" with layers_to_transform [{string.Join(", ", options.LayersToTransform)}]";
            var some = string.Join(", ", slots.Take(8).Select(s => s.Name)) + (slots.Count > 8 ? ", ..." : "");
            throw new PeftConfigurationException(options.Key("target_modules"), options.TargetModulesDescription,
                $"matches no linear layer of the model{layers} (its linear layers are: {some})");
        }
        return targets;
    }

    /// <summary>The list to match against, or null when target_modules is a regex.</summary>
    internal static IReadOnlyList<string>? ResolveTargetList(LoraOptions options, IReadOnlyList<LinearSlot> slots)
    {
        if (options.TargetModulesRegex is null) return options.EffectiveTargetList;
        if (options.TargetModulesRegex != LoraOptions.AllLinear) return null;
        // PEFT's _maybe_include_all_linear_layers: the last name component of every linear but the output head.
        var headShortNames = slots.Where(s => s.Kind == LinearKind.OutputHead).Select(s => s.ShortName).ToHashSet(StringComparer.Ordinal);
        return slots.Where(s => s.Kind != LinearKind.OutputHead).Select(s => s.ShortName)
            .Where(n => !headShortNames.Contains(n)).Distinct().ToList();
    }

    static bool MatchesList(IReadOnlyList<string> list, LinearSlot slot, List<int>? layersToTransform)
    {
        if (list.Contains(slot.Name)) return true;
        if (!list.Any(entry => entry == slot.ShortName || slot.Name.EndsWith("." + entry, StringComparison.Ordinal))) return false;
        if (layersToTransform is not { Count: > 0 }) return true;
        return slot.LayerIndex is { } index && layersToTransform.Contains(index);
    }

    static bool FullMatch(string pattern, string name) =>
        Regex.IsMatch(name, $"^(?:{pattern})$", RegexOptions.CultureInvariant, RegexTimeout);

    /// <summary>PEFT's get_pattern_key: the first key k with <c>re.match(rf"(.*\.)?({k})$", name)</c>.</summary>
    internal static string? PatternKeyFor(IEnumerable<string> keys, string name) =>
        keys.FirstOrDefault(k => Regex.IsMatch(name, $"^(.*\\.)?({k})$", RegexOptions.CultureInvariant, RegexTimeout));

    internal static int RankFor(LoraOptions options, string name) =>
        PatternKeyFor(options.RankPattern.Keys, name) is { } key ? options.RankPattern[key] : options.R;

    internal static double AlphaFor(LoraOptions options, string name) =>
        PatternKeyFor(options.AlphaPattern.Keys, name) is { } key ? options.AlphaPattern[key] : options.LoraAlpha;
}
