using System.Globalization;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;

namespace Peft.Host.Planning;

/// <summary>The knobs <c>peft plan</c> takes on its command line for a method or combination.</summary>
public sealed record MethodKnobs
{
    public int Rank { get; init; } = 16;
    public IReadOnlyList<string>? TargetModules { get; init; }
    public string? Quantize { get; init; }
    public bool DoubleQuant { get; init; } = true;
    public int LisaK { get; init; } = 2;
    public int GaloreRank { get; init; } = 128;
    public string GaloreType { get; init; } = "std";
    public bool GaloreLayerwise { get; init; }
}

/// <summary>
/// A method name as users say it (full, lora, dora, qlora, qlora+dora, galore, lisa, lisa+lora, or any plugin
/// method) turned into the sections <c>peft train</c> composes: qlora = nf4 quantizer + lora; qlora+dora = nf4 +
/// dora; galore = full + galore optimizer; lisa = full + lisa hook; lisa+lora = lora + lisa hook.
/// </summary>
public static class PlanShorthand
{
    public static readonly IReadOnlyList<string> Known = ["full", "lora", "dora", "qlora", "qlora+dora", "galore", "lisa", "lisa+lora"];

    public static IConfiguration Components(string method, MethodKnobs k)
    {
        var m = method.Trim().ToLowerInvariant().Replace("qlora-dora", "qlora+dora").Replace("lisa-lora", "lisa+lora");
        var keys = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        string? quantizer = k.Quantize;
        void Adapter(string name)
        {
            keys["method:name"] = name;
            keys["method:r"] = I(k.Rank);
            keys["method:lora_alpha"] = I(k.Rank);
            var targets = k.TargetModules ?? ["q_proj", "v_proj"];
            for (int i = 0; i < targets.Count; i++) keys[$"method:target_modules:{i}"] = targets[i];
        }
        switch (m)
        {
            case "full": keys["method:name"] = "full"; break;
            case "lora": Adapter("lora"); break;
            case "dora": Adapter("dora"); break;
            case "qlora": Adapter("lora"); quantizer ??= "nf4"; break;
            case "qlora+dora": Adapter("dora"); quantizer ??= "nf4"; break;
            case "galore":
                keys["method:name"] = "full";
                keys["optimizer:name"] = "galore";
                keys["optimizer:rank"] = I(k.GaloreRank);
                keys["optimizer:proj_type"] = k.GaloreType;
                if (k.GaloreLayerwise) keys["optimizer:layerwise"] = "true";
                break;
            case "lisa":
                keys["method:name"] = "full";
                keys["hooks:0:name"] = "lisa";
                keys["hooks:0:k"] = I(k.LisaK);
                break;
            case "lisa+lora":
                Adapter("lora");
                keys["hooks:0:name"] = "lisa";
                keys["hooks:0:k"] = I(k.LisaK);
                break;
            default:
                if (m.Length == 0 || m.Contains('+'))
                    throw new PeftConfigurationException("--method", method, $"unknown method (known: {string.Join(", ", Known)}, or a plugin's method name)");
                keys["method:name"] = m; // a plugin's method, planned from its own EstimateMemory
                break;
        }
        if (quantizer is not null)
        {
            keys["quantization:name"] = quantizer;
            if (quantizer is "nf4" or "fp4") keys["quantization:double_quant"] = k.DoubleQuant ? "true" : "false";
        }
        return new ConfigurationBuilder().AddInMemoryCollection(keys).Build();
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
}
