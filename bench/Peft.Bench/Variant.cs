namespace Peft.Bench;

/// <summary>
/// One configuration the bench measures: a training method (the <c>method</c> section the composer gets) and
/// whether <c>training:activation_checkpointing</c> is on. To add a variant, add a line to <see cref="All"/>.
/// </summary>
public sealed record Variant(string Name, string Description, IReadOnlyDictionary<string, string?> MethodSection, bool ActivationCheckpointing,
    string? BaselineName = null)
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
    ];

    /// <summary>What runs without --variants (the LoRA vs full fine-tuning set; DoRA is asked for by name).</summary>
    public static IReadOnlyList<Variant> Defaults => All.Where(v => v.BaselineName is null && !v.MethodSection.ContainsKey("quantization:name")).ToList();

    public static Variant? Find(string name) => All.FirstOrDefault(v => string.Equals(v.Name, name, StringComparison.Ordinal));

    /// <summary>The variant this one is compared with (LoRA against full fine-tuning with the same checkpointing setting).</summary>
    public Variant? Baseline => BaselineName is not null ? Find(BaselineName)
        : MethodSection["method:name"] == "full" ? null : All.First(v => v.MethodSection["method:name"] == "full" && v.ActivationCheckpointing == ActivationCheckpointing);
}
