using System.Globalization;
using Microsoft.Extensions.Configuration;

namespace Peft.Host.Planning;

public enum QualityRequirement { Maximum, High, Acceptable }
public enum ThroughputPriority { High, Medium, Low }

/// <summary>What the user has and wants (the seed's decision-function inputs).</summary>
public sealed record AdvisorInputs(double ModelSizeBillions, double GpuMemoryGb, int Gpus, QualityRequirement Quality, bool MultiTenant, ThroughputPriority Throughput);

/// <summary>A method with its settings, and why.</summary>
public sealed record Recommendation(string Method, string Settings, string Reason)
{
    public static Recommendation None(string reason) => new("none", "", reason);
}

/// <summary>One candidate the plan-based decision priced.</summary>
public sealed record CandidateBudget(string Method, string Settings, MemoryPlan Plan, bool Fits);

/// <summary>
/// <c>peft recommend</c>: the seed's decision matrix as code, in two forms.
/// <list type="bullet">
/// <item><see cref="RuleOfThumb"/>: the seed's <c>select_finetuning_method</c> with its round budgets (16-bit base
/// = 2 GB per billion, NF4 = 0.5, GaLore = 2 × base + 20, LISA = base + 25, full = 16 per billion), except that it
/// honours the throughput input the seed's function never reads: high throughput (and quality short of maximum)
/// picks LoRA, the fastest method in the seed's own throughput table, so its table's last row holds.</item>
/// <item><see cref="FromPlans"/>: the same preferences, but "does it fit" is the planner's per-GPU total (ZeRO-3
/// over the given GPUs, the given batch) for the actual model, not a rule of thumb.</item>
/// </list>
/// The command prints the plan-based answer and says when the rule of thumb disagrees.
/// </summary>
public static class MethodAdvisor
{
    public static Recommendation RuleOfThumb(AdvisorInputs i)
    {
        double total = i.GpuMemoryGb * i.Gpus, base16 = i.ModelSizeBillions * 2, nf4 = i.ModelSizeBillions * 0.5;
        string have = F($"{i.Gpus} x {i.GpuMemoryGb:0.##} GB = {total:0.##} GB");
        if (total < base16 * 0.3) return Recommendation.None(F($"model too large for the hardware: {have} is under 30% of the {base16:0.#} GB 16-bit base"));
        if (total < base16 + 5)
            return total >= nf4 + 10
                ? new("qlora", "r=16, nf4 with double quantization", F($"only a 4-bit base fits: the 16-bit base needs {base16 + 5:0.#} GB, {have}; NF4 needs {nf4 + 10:0.#} GB"))
                : Recommendation.None(F($"insufficient memory: even the 4-bit base needs {nf4 + 10:0.#} GB, {have}"));
        if (i.MultiTenant)
            return i.Quality == QualityRequirement.Maximum
                ? new("dora", "r=16", "multi-tenant serving needs adapters; DoRA is the best-quality adapter")
                : new("lora", "r=16", "multi-tenant serving needs adapters; LoRA is the cheapest to train and switch");
        if (i.Throughput == ThroughputPriority.High && i.Quality != QualityRequirement.Maximum)
            return new("lora", "r=16", "fast iteration: LoRA trains fastest (gradients for ~0.1% of the parameters; 160% of full fine-tuning's throughput in the seed's table)");
        double full = i.ModelSizeBillions * 16, galore = base16 * 2 + 20, lisa = base16 + 25;
        switch (i.Quality)
        {
            case QualityRequirement.Maximum:
                if (total >= full) return new("full", "AdamW, mixed precision", F($"maximum quality and {have} holds full fine-tuning's {full:0.#} GB"));
                if (total >= galore) return new("galore", "rank 128", F($"maximum quality without adapters: GaLore's ~{galore:0.#} GB fits {have}; full fine-tuning needs {full:0.#} GB"));
                if (total >= lisa) return new("lisa", "k=8", F($"maximum quality without adapters: LISA's ~{lisa:0.#} GB fits {have}; GaLore needs ~{galore:0.#} GB"));
                return new("dora", "r=16", F($"maximum quality within {have}: DoRA (LISA needs ~{lisa:0.#} GB)"));
            case QualityRequirement.High:
                if (total >= lisa) return new("lisa", "k=4", F($"high quality without adapters: LISA k=4's ~{lisa:0.#} GB fits {have}"));
                return new("dora", "r=16", F($"high quality within {have}: DoRA (LISA needs ~{lisa:0.#} GB)"));
            default:
                if (total >= nf4 + 10) return new("qlora", "r=16, nf4 with double quantization", F($"acceptable quality at the least memory: QLoRA's ~{nf4 + 10:0.#} GB fits {have}"));
                return new("lora", "r=16", "acceptable quality");
        }
    }

    /// <summary>
    /// The same preferences, with "fits" decided by <see cref="MemoryPlanner"/> for <paramref name="model"/>: per-GPU
    /// total at ZeRO-3 over the given GPUs, with <paramref name="template"/>'s batch, length and precision.
    /// </summary>
    public static (Recommendation Choice, IReadOnlyList<CandidateBudget> Budgets) FromPlans(AdvisorInputs i, PlanModel model, PlanSettings template, IPlanComponentSource components)
    {
        var budgets = new List<CandidateBudget>();
        long memory = (long)Math.Round(i.GpuMemoryGb * 1e9);
        string have = F($"{i.Gpus} x {i.GpuMemoryGb:0.##} GB");
        CandidateBudget Price(string method, string settings, MethodKnobs knobs)
        {
            var existing = budgets.FirstOrDefault(b => b.Method == method && b.Settings == settings);
            if (existing is not null) return existing;
            var plan = MemoryPlanner.Plan(model, template with
            {
                Components = PlanShorthand.Components(method, knobs), Label = method, Gpus = i.Gpus, ZeroStage = 3, GpuMemoryBytes = memory,
            }, components);
            var b = new CandidateBudget(method, settings, plan, plan.Fits == true);
            budgets.Add(b);
            return b;
        }
        string Per(CandidateBudget b) => F($"{PlanReport.Gb(b.Plan.PerGpu.TotalBytes)} per GPU");
        var adapter = new MethodKnobs { Rank = 16, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj"] };
        var lora = Price("lora", "r=16", adapter);
        Recommendation choice;
        if (!lora.Fits)
        {
            var q = Price("qlora", "r=16, nf4 with double quantization", adapter);
            choice = q.Fits
                ? new("qlora", q.Settings, $"only a 4-bit base fits: LoRA needs {Per(lora)}, QLoRA {Per(q)} on {have}")
                : Recommendation.None($"insufficient memory: even QLoRA needs {Per(q)} on {have}");
            return (choice, budgets);
        }
        if (i.MultiTenant)
        {
            var dora = Price("dora", "r=16", adapter);
            choice = i.Quality == QualityRequirement.Maximum && dora.Fits
                ? new("dora", "r=16", $"multi-tenant serving needs adapters; DoRA ({Per(dora)}) is the best-quality adapter")
                : new("lora", "r=16", $"multi-tenant serving needs adapters; LoRA ({Per(lora)}) is the cheapest to train and switch");
            return (choice, budgets);
        }
        if (i.Throughput == ThroughputPriority.High && i.Quality != QualityRequirement.Maximum)
            return (new("lora", "r=16", $"fast iteration: LoRA trains fastest ({Per(lora)})"), budgets);
        switch (i.Quality)
        {
            case QualityRequirement.Maximum:
            {
                var full = Price("full", "AdamW, mixed precision", new MethodKnobs());
                if (full.Fits) return (new("full", full.Settings, $"maximum quality: full fine-tuning fits ({Per(full)})"), budgets);
                var galore = Price("galore", "rank 128", new MethodKnobs { GaloreRank = 128 });
                if (galore.Fits) return (new("galore", galore.Settings, $"maximum quality without adapters: GaLore fits ({Per(galore)}); full fine-tuning needs {Per(full)}"), budgets);
                var lisa = Price("lisa", "k=8", new MethodKnobs { LisaK = Math.Min(8, model.Shape.NumHiddenLayers) });
                if (lisa.Fits) return (new("lisa", "k=8", $"maximum quality without adapters: LISA k=8 fits ({Per(lisa)}); GaLore needs {Per(galore)}"), budgets);
                var dora = Price("dora", "r=16", adapter);
                return (new("dora", "r=16", $"maximum quality within {have}: DoRA ({Per(dora)}); LISA k=8 needs {Per(lisa)}"), budgets);
            }
            case QualityRequirement.High:
            {
                var lisa = Price("lisa", "k=4", new MethodKnobs { LisaK = Math.Min(4, model.Shape.NumHiddenLayers) });
                if (lisa.Fits) return (new("lisa", "k=4", $"high quality without adapters: LISA k=4 fits ({Per(lisa)})"), budgets);
                var dora = Price("dora", "r=16", adapter);
                return (new("dora", "r=16", $"high quality within {have}: DoRA ({Per(dora)}); LISA k=4 needs {Per(lisa)}"), budgets);
            }
            default:
            {
                var q = Price("qlora", "r=16, nf4 with double quantization", adapter);
                return (q.Fits ? new("qlora", q.Settings, $"acceptable quality at the least memory: QLoRA ({Per(q)})") : new("lora", "r=16", $"acceptable quality: LoRA ({Per(lora)})"), budgets);
            }
        }
    }

    /// <summary>The preset closest in size to <paramref name="billions"/> (for a plan when only a size is given).</summary>
    public static string NearestPreset(double billions) =>
        new[] { ("llama2-7b", 7.0), ("llama3-8b", 8.0), ("llama2-13b", 13.0), ("llama2-70b", 70.0) }
            .OrderBy(p => Math.Abs(Math.Log(p.Item2 / billions))).First().Item1;

    static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
