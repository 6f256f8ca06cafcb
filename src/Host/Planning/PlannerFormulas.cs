using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Memory;
using Peft.Abstractions.Model;

namespace Peft.Host.Planning;

/// <summary>
/// The planner's own formulas for components whose plugin is not loaded (or gives no estimate). A plugin's
/// estimate always wins (<see cref="MemoryPlanner"/>); these follow ../shared/reference/METHODS.md.
/// Option keys are read leniently (only the ones a formula needs) so a plugin's own binding stays the judge.
/// </summary>
public static class PlannerFormulas
{
    /// <summary>Trainable tensors of an adapter method: LoRA A (r, in) and B (out, r) per target; DoRA adds the magnitude (out).</summary>
    public static IReadOnlyList<PlannedParameter>? AdapterTensors(string method, PlanModel model, IConfiguration o, int elementBytes)
    {
        bool dora = string.Equals(method, "dora", StringComparison.OrdinalIgnoreCase);
        if (!dora && !string.Equals(method, "lora", StringComparison.OrdinalIgnoreCase)) return null;
        var list = new List<PlannedParameter>();
        foreach (var (slot, r) in AdapterTargets(model, o))
        {
            list.Add(new($"{slot.Name}.lora_A.weight", [r, slot.InFeatures], slot.LayerIndex, elementBytes));
            list.Add(new($"{slot.Name}.lora_B.weight", [slot.OutFeatures, r], slot.LayerIndex, elementBytes));
            if (dora) list.Add(new($"{slot.Name}.lora_magnitude_vector", [slot.OutFeatures], slot.LayerIndex, elementBytes));
        }
        return list;
    }

    /// <summary>
    /// LoRA-style targets: <c>target_modules</c> a list (name equals an entry or ends with "." + entry), a regex
    /// string (full match), or "all-linear" (every linear but the head); PEFT's default q_proj, v_proj;
    /// <c>layers_to_transform</c> restricts by layer; rank <c>r</c> (default 8). rank_pattern needs the plugin.
    /// </summary>
    public static IReadOnlyList<(LinearSlot Slot, int Rank)> AdapterTargets(PlanModel model, IConfiguration o)
    {
        int r = Int(o, "r", 8);
        if (r <= 0) throw new PeftConfigurationException(Key(o, "r"), r.ToString(CultureInfo.InvariantCulture), "must be a positive integer");
        if (o.GetSection("rank_pattern").GetChildren().Any())
            throw new PeftConfigurationException(Key(o, "rank_pattern"), "(set)", "planning per-module ranks needs the method's plugin loaded");
        var layers = o.GetSection("layers_to_transform") is var lt && lt.Value is { } one ? [int.Parse(one, CultureInfo.InvariantCulture)]
            : lt.GetChildren().Select(c => int.Parse(c.Value!, CultureInfo.InvariantCulture)).ToList();
        var targets = o.GetSection("target_modules");
        Func<LinearSlot, bool> match;
        if (targets.Value is { } single)
        {
            if (single == "all-linear") match = s => s.Kind != LinearKind.OutputHead;
            else match = s => Regex.IsMatch(s.Name, $"^(?:{single})$", RegexOptions.CultureInvariant);
        }
        else
        {
            var list = targets.GetChildren().Select(c => c.Value!).ToList();
            if (list.Count == 0) list = ["q_proj", "v_proj"];
            match = s => list.Contains(s.Name) || list.Any(e => s.Name.EndsWith("." + e, StringComparison.Ordinal));
        }
        var chosen = model.Slots.Where(match).Where(s => layers.Count == 0 || (s.LayerIndex is { } i && layers.Contains(i))).ToList();
        if (chosen.Count == 0)
            throw new PeftConfigurationException(Key(o, "target_modules"), targets.Value ?? string.Join(",", targets.GetChildren().Select(c => c.Value)),
                "matches no linear layer of the model (its linears are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)");
        return chosen.Select(s => (s, r)).ToList();
    }

    /// <summary>
    /// Bytes of one quantized linear weight (out, in): (codes, statistics). nf4/fp4: 4-bit codes packed two per
    /// byte, one fp32 absmax per block of <c>block_size</c> (64); with <c>double_quant</c> (default true) the absmax
    /// values become 8-bit codes with one fp32 absmax per 256 of them plus one fp32 offset: 4 + 8/64 + 32/(64·256)
    /// = 4.127 bits per weight (4.5 without). int8: one byte per weight and one fp32 scale per output row.
    /// </summary>
    public static (long Codes, long Statistics)? QuantizedBytes(string quantizer, LinearSlot slot, IConfiguration o)
    {
        long n = slot.Parameters;
        switch (quantizer.ToLowerInvariant())
        {
            case "nf4":
            case "fp4":
            {
                int block = Int(o, "block_size", 64);
                if (block <= 0) throw new PeftConfigurationException(Key(o, "block_size"), block.ToString(CultureInfo.InvariantCulture), "must be a positive integer");
                long blocks = (n + block - 1) / block;
                long stats = Bool(o, "double_quant", true) ? blocks + (blocks + 255) / 256 * 4 + 4 : blocks * 4;
                return ((n + 1) / 2, stats);
            }
            case "int8":
                return (n, slot.OutFeatures * 4);
            default:
                return null;
        }
    }

    /// <summary>Bits per weight of the quantizer formulas above for a large matrix (for display).</summary>
    public static double? BitsPerParameter(string quantizer, IConfiguration o) => quantizer.ToLowerInvariant() switch
    {
        "nf4" or "fp4" => Bool(o, "double_quant", true) ? 4 + 8.0 / Int(o, "block_size", 64) + 32.0 / (Int(o, "block_size", 64) * 256.0) : 4 + 32.0 / Int(o, "block_size", 64),
        "int8" => 8,
        _ => null,
    };

    /// <summary>
    /// AdamW (the host's default strategy; <see cref="Optimization.AdamWStrategy"/> gives the same figure): two moments
    /// per element and an 8-byte step counter per tensor. Other strategies plan themselves
    /// (<c>IOptimizerStrategy.EstimateMemory</c>: the galore plugin's); null for them.
    /// </summary>
    public static OptimizerMemoryEstimate? Optimizer(string name, IReadOnlyList<PlannedParameter> ps, IConfiguration o) =>
        string.Equals(name, "adamw", StringComparison.OrdinalIgnoreCase) ? new OptimizerMemoryEstimate(ps.Sum(p => 2 * p.Elements * p.ElementBytes + 8)) : null;

    static string Key(IConfiguration o, string key) => o is IConfigurationSection s && s.Path.Length > 0 ? $"{s.Path}:{key}" : key;

    internal static int Int(IConfiguration o, string key, int fallback)
    {
        var v = o[key];
        if (v is null) return fallback;
        return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i) ? i
            : throw new PeftConfigurationException(Key(o, key), v, "must be an integer");
    }

    internal static double Double(IConfiguration o, string key, double fallback)
    {
        var v = o[key];
        if (v is null) return fallback;
        return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d
            : throw new PeftConfigurationException(Key(o, key), v, "must be a number");
    }

    internal static bool Bool(IConfiguration o, string key, bool fallback)
    {
        var v = o[key];
        if (v is null) return fallback;
        return bool.TryParse(v, out var b) ? b : throw new PeftConfigurationException(Key(o, key), v, "must be true or false");
    }
}
