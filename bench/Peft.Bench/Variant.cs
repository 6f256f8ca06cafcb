namespace Peft.Bench;

/// <summary>
/// One configuration the bench measures: a training method (the <c>method</c> section the composer gets) and
/// whether <c>training:activation_checkpointing</c> is on. To add a variant, add a line to <see cref="All"/>.
/// </summary>
public sealed record Variant(string Name, string Description, IReadOnlyDictionary<string, string?> MethodSection, bool ActivationCheckpointing)
{
    /// <summary>LoRA as the issue asks: r = 16, alpha = 32, no dropout, on the attention projections.</summary>
    static readonly Dictionary<string, string?> Lora = new()
    {
        ["method:name"] = "lora",
        ["method:r"] = "16",
        ["method:lora_alpha"] = "32",
        ["method:lora_dropout"] = "0",
        ["method:target_modules:0"] = "q_proj",
        ["method:target_modules:1"] = "k_proj",
        ["method:target_modules:2"] = "v_proj",
        ["method:target_modules:3"] = "o_proj",
    };

    static readonly Dictionary<string, string?> Full = new() { ["method:name"] = "full" };

    /// <summary>GaLore as the paper runs it: rank 128, gap 200, scale 0.25, std projection on every attention/MLP weight.</summary>
    static Dictionary<string, string?> GaLore(bool layerwise = false, bool int8 = false)
    {
        var d = new Dictionary<string, string?>
        {
            ["method:name"] = "full",
            ["optimizer:name"] = "galore",
            ["optimizer:rank"] = "128",
            ["optimizer:update_proj_gap"] = "200",
            ["optimizer:scale"] = "0.25",
        };
        if (layerwise) d["optimizer:layerwise"] = "true";
        if (int8) d["quantization:name"] = "int8";
        if (layerwise || int8) d["training:max_grad_norm"] = "0";   // layer-wise and INT8 GaLore refuse global-norm clipping
        return d;
    }

    public static readonly IReadOnlyList<Variant> All =
    [
        new("full", "full fine-tuning (every parameter, AdamW)", Full, false),
        new("lora", "LoRA r=16, alpha=32 on q,k,v,o_proj (AdamW)", Lora, false),
        new("full-ac", "full fine-tuning + activation checkpointing", Full, true),
        new("lora-ac", "LoRA + activation checkpointing", Lora, true),
        new("galore", "full-weight GaLore std r=128 (AdamW elsewhere)", GaLore(), false),
        new("galore-lw", "GaLore, layer-wise updates during backward", GaLore(layerwise: true), false),
        new("galore-int8", "GaLore on an INT8 base (Q-GaLore, stochastic rounding)", GaLore(int8: true), false),
    ];

    /// <summary>What runs without --variants (the GaLore variants run with --variants full,galore,galore-lw,galore-int8).</summary>
    public static IReadOnlyList<Variant> Defaults => All.Take(4).ToList();

    public static Variant? Find(string name) => All.FirstOrDefault(v => string.Equals(v.Name, name, StringComparison.Ordinal));

    /// <summary>The variant this one is compared with (LoRA against full fine-tuning with the same checkpointing setting).</summary>
    public Variant? Baseline => MethodSection["method:name"] == "full" ? null : All.First(v => v.MethodSection["method:name"] == "full" && v.ActivationCheckpointing == ActivationCheckpointing);
}
