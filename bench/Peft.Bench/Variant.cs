namespace Peft.Bench;

/// <summary>
/// One configuration the bench measures: a training method (the <c>method</c> section the composer gets) and
/// whether <c>training:activation_checkpointing</c> is on. To add a variant, add a line to <see cref="All"/>.
/// </summary>
public sealed record Variant(string Name, string Description, IReadOnlyDictionary<string, string?> MethodSection, bool ActivationCheckpointing,
    string? BaselineName = null, bool HandWritten = false, int Ranks = 1)
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

    /// <summary>
    /// LISA (the plugin's <c>lisa</c> hook) on full fine-tuning: k of the 6 layers per interval, interval 4 so one
    /// switch (state release and restart) falls inside the timed steps (steps 0-1 warm up, 2-7 timed, switches at 0 and 4).
    /// </summary>
    static Dictionary<string, string?> Lisa(int k) => new()
    {
        ["method:name"] = "full",
        ["hooks:0:name"] = "lisa",
        ["hooks:0:k"] = k.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["hooks:0:interval"] = "4",
    };

    /// <summary>DoRA with LoRA's exact options (same r, alpha, dropout, targets): only the method name differs.</summary>
    static readonly Dictionary<string, string?> Dora = new(Lora) { ["method:name"] = "dora" };

    /// <summary>QLoRA: the nf4 quantizer (block 64, double quantization) under LoRA's options; QLoRA+DoRA the same under DoRA's.</summary>
    static readonly Dictionary<string, string?> QLora = new(Lora) { ["quantization:name"] = "nf4" };
    static readonly Dictionary<string, string?> QLoraDora = new(Dora) { ["quantization:name"] = "nf4" };

    public static readonly IReadOnlyList<Variant> All =
    [
        new("full", "full fine-tuning (every parameter, AdamW)", Full, false),
        new("lora", "LoRA r=16, alpha=32 on q,k,v,o_proj (AdamW)", Lora, false),
        new("full-ac", "full fine-tuning + activation checkpointing", Full, true),
        new("lora-ac", "LoRA + activation checkpointing", Lora, true),
        new("dora", "DoRA r=16, alpha=32 on q,k,v,o_proj (AdamW), compared with lora", Dora, false, "lora"),
        new("qlora", "QLoRA: nf4 base + LoRA r=16, alpha=32 on q,k,v,o_proj", QLora, false),
        new("qlora-dora", "QLoRA+DoRA: nf4 base + DoRA (same options), compared with qlora", QLoraDora, false, "qlora"),
        new("galore", "full-weight GaLore std r=128 (AdamW elsewhere)", GaLore(), false, "full"),
        new("galore-lw", "GaLore, layer-wise updates during backward", GaLore(layerwise: true), false, "full"),
        new("galore-int8", "GaLore on an INT8 base (Q-GaLore, stochastic rounding)", GaLore(int8: true), false, "full"),
        new("lisa-k1", "LISA k=1 of 6 layers, interval 4 (embedding/head and final norm always train)", Lisa(1), false),
        new("lisa-k2", "LISA k=2 of 6 layers, interval 4", Lisa(2), false),
        new("lisa-all", "LISA k=6 (all layers), interval 4", Lisa(6), false),
        new("full-bf16", "full fine-tuning, training:precision bf16-mixed (fp32 master + bf16 model copy)", new Dictionary<string, string?>(Full) { ["training:precision"] = "bf16-mixed" }, false, "full"),
        new("full-fp16", "full fine-tuning, training:precision fp16-mixed (dynamic loss scaling)", new Dictionary<string, string?>(Full) { ["training:precision"] = "fp16-mixed" }, false, "full"),
        new("lora-bf16", "LoRA r=16, training:precision bf16-mixed", new Dictionary<string, string?>(Lora) { ["training:precision"] = "bf16-mixed" }, false, "lora"),
        // The same-engine anchor: the step written by hand on TorchSharp (PlainStep), no framework code at all.
        new("plain-full", "hand-written TorchSharp step, full fine-tuning (torch.optim.AdamW, cross_entropy on full logits)", new Dictionary<string, string?> { ["method:name"] = "plain" }, false, HandWritten: true),
        new("plain-lora", "hand-written TorchSharp step, LoRA r=16, alpha=32 on q,k,v,o", new Dictionary<string, string?> { ["method:name"] = "plain" }, false, HandWritten: true),
        new("full-dp2", "full fine-tuning on 2 MPI ranks x threads/2 (data parallel, global batch split), compared with full", Full, false, "full", Ranks: 2),
        new("lora-dp2", "LoRA on 2 MPI ranks x threads/2 (data parallel, global batch split), compared with lora", Lora, false, "lora", Ranks: 2),
        new("full-dp2-zero1", "full-dp2 with ZeRO-1 (each rank holds and updates half the AdamW state), compared with full", new Dictionary<string, string?>(Full) { ["distributed:zero"] = "1" }, false, "full", Ranks: 2),
    ];

    /// <summary>What runs without --variants (the LoRA vs full fine-tuning set; DoRA is asked for by name).</summary>
    public static IReadOnlyList<Variant> Defaults => All.Where(v => v.BaselineName is null && !v.HandWritten && !v.MethodSection.ContainsKey("quantization:name") && !v.MethodSection.ContainsKey("optimizer:name") && !v.MethodSection.ContainsKey("hooks:0:name")).ToList();

    public static Variant? Find(string name) => All.FirstOrDefault(v => string.Equals(v.Name, name, StringComparison.Ordinal));

    /// <summary>The variant this one is compared with (LoRA against full fine-tuning with the same checkpointing setting).</summary>
    public Variant? Baseline => HandWritten ? null : BaselineName is not null ? Find(BaselineName)
        : IsPlainFullFineTuning ? null : All.First(v => v.IsPlainFullFineTuning && v.ActivationCheckpointing == ActivationCheckpointing);

    /// <summary>The hand-written step of the same method (lora → plain-lora, full → plain-full), or null.</summary>
    public Variant? HandWrittenTwin => Name is "lora" or "full" ? Find("plain-" + Name) : null;

    /// <summary>Full fine-tuning with no hook (the baseline; LISA variants are full fine-tuning plus the lisa hook).</summary>
    bool IsPlainFullFineTuning => MethodSection["method:name"] == "full" && !MethodSection.Keys.Any(k => k.StartsWith("hooks:", StringComparison.Ordinal));
}
