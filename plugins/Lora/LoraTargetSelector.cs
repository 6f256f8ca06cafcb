using System.Text.RegularExpressions;
using Peft.Abstractions;

namespace Peft.Plugins.Lora;

/// <summary>One linear layer a LoRA adapter will wrap, with the rank and alpha that apply to it.</summary>
public sealed record LoraTarget(string ModuleName, int Rank, double Alpha);

/// <summary>
/// Chooses the linear layers a LoRA adapter wraps, following HF PEFT (<c>check_target_module_exists</c>,
/// <c>get_pattern_key</c>):
/// <list type="bullet">
/// <item>target_modules list: a module matches when its name equals an entry or ends with "." + entry; then, if
/// layers_to_transform is set (and the name was not an exact entry), its decoder layer index must be listed
/// (a module without a layer index, such as lm_head, is then excluded).</item>
/// <item>target_modules string: a regex that must match the full module name (layers_to_transform not allowed).</item>
/// <item>"all-linear": the distinct last name components of every linear but the output head, used as a list.</item>
/// <item>rank_pattern / alpha_pattern: the first key (in insertion order) for which <c>(.*\.)?(key)$</c> matches
/// from the start of the module name overrides r / lora_alpha.</item>
/// </list>
/// </summary>
public static class LoraTargetSelector
{
    static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    /// <summary>The targets among <paramref name="linearNames"/>, in model order. Throws when nothing matches.</summary>
    /// <param name="layerIndexOf">Decoder layer index of a module name, or null (IPeftModel.LayerIndexOf).</param>
    public static IReadOnlyList<LoraTarget> Select(LoraOptions options, IReadOnlyList<string> linearNames, string outputHeadName, Func<string, int?> layerIndexOf)
    {
        var list = ResolveTargetList(options, linearNames, outputHeadName);
        var targets = new List<LoraTarget>();
        foreach (var name in linearNames)
        {
            bool found = list is null ? FullMatch(options.TargetModulesRegex!, name) : MatchesList(list, name, options.LayersToTransform, layerIndexOf);
            if (!found) continue;
            targets.Add(new LoraTarget(name, RankFor(options, name), AlphaFor(options, name)));
        }
        if (targets.Count == 0)
        {
            var layers = options.LayersToTransform is null ? "" : $" with layers_to_transform [{string.Join(", ", options.LayersToTransform)}]";
            var some = string.Join(", ", linearNames.Take(8)) + (linearNames.Count > 8 ? ", ..." : "");
            throw new PeftConfigurationException(options.Key("target_modules"), options.TargetModulesDescription,
                $"matches no linear layer of the model{layers} (its linear layers are: {some})");
        }
        return targets;
    }

    /// <summary>The list to match against, or null when target_modules is a regex.</summary>
    internal static IReadOnlyList<string>? ResolveTargetList(LoraOptions options, IReadOnlyList<string> linearNames, string outputHeadName)
    {
        if (options.TargetModulesRegex is null) return options.EffectiveTargetList;
        if (options.TargetModulesRegex != LoraOptions.AllLinear) return null;
        // PEFT's _maybe_include_all_linear_layers: the last name component of every linear but the output head.
        var head = LastComponent(outputHeadName);
        return linearNames.Where(n => n != outputHeadName).Select(LastComponent).Where(n => n != head).Distinct().ToList();
    }

    static bool MatchesList(IReadOnlyList<string> list, string name, List<int>? layersToTransform, Func<string, int?> layerIndexOf)
    {
        if (list.Contains(name)) return true;
        if (!list.Any(entry => name.EndsWith("." + entry, StringComparison.Ordinal))) return false;
        if (layersToTransform is not { Count: > 0 }) return true;
        return layerIndexOf(name) is { } index && layersToTransform.Contains(index);
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

    static string LastComponent(string name) => name[(name.LastIndexOf('.') + 1)..];
}
