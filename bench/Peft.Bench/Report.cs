using System.Globalization;
using System.Text;
using System.Text.Json;
using Peft.Host.Training;

namespace Peft.Bench;

/// <summary>Medians per variant, LoRA/full ratios, and the markdown report.</summary>
public sealed class Report(BenchOptions options, IReadOnlyList<Variant> variants, IReadOnlyList<Measurement> runs, IReadOnlyList<Measurement> breakdowns)
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The issue's target: LoRA at least this many times full fine-tuning's tokens/s.</summary>
    public const double TargetSpeedup = 1.5;

    /// <summary>Issue 14: what LoRA training adds on top of the loaded model at most this fraction of full fine-tuning's.</summary>
    public const double TargetGrowth = 0.5;

    /// <summary>Issue 14: LoRA at least this many times the hand-written TorchSharp LoRA step's tokens/s.</summary>
    public const double TargetOverHandWritten = 1.2;

    IReadOnlyList<Measurement> Of(Variant v) => runs.Where(m => m.Variant == v.Name && m.Skipped is null).ToList();
    string? SkippedReason(Variant v) => runs.FirstOrDefault(m => m.Variant == v.Name && m.Skipped is not null)?.Skipped;

    public static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToList();
        if (s.Count == 0) return double.NaN;
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }

    static string Mib(double bytes) => double.IsNaN(bytes) ? "–" : (bytes / (1024 * 1024)).ToString("0", Inv) + " MiB";

    /// <summary>(speed ratio of medians, peak ratio, growth ratio, per-round paired speed ratios) of a variant against its baseline, or null.</summary>
    public (double Speed, double Peak, double Growth, IReadOnlyList<double> Paired)? Compare(Variant v) =>
        v.Baseline is { } b ? Compare(v, b) : null;

    /// <summary>As <see cref="Compare(Variant)"/>, against any other variant.</summary>
    public (double Speed, double Peak, double Growth, IReadOnlyList<double> Paired)? Compare(Variant v, Variant b)
    {
        var mine = Of(v);
        var theirs = Of(b);
        if (mine.Count == 0 || theirs.Count == 0) return null;
        double speed = Median(mine.Select(m => m.TokensPerSecond)) / Median(theirs.Select(m => m.TokensPerSecond));
        double peak = Median(mine.Select(m => (double)m.PeakRssBytes)) / Median(theirs.Select(m => (double)m.PeakRssBytes));
        double growth = Median(mine.Select(Growth)) / Median(theirs.Select(Growth));
        // Runs alternate (full, lora, full, lora ...): the k-th run of each variant share a round.
        var paired = mine.Zip(theirs, (x, y) => x.TokensPerSecond / y.TokensPerSecond).ToList();
        return (speed, peak, growth, paired);
    }

    /// <summary>
    /// LoRA vs full: tokens/s ≥ 1.5× and growth ≤ 0.5×, the growth judged on both readings (peak − RSS before training,
    /// and the live native heap added, which repeats to a fraction of a MiB where RSS moves by tens). A LoRA variant vs
    /// LoRA (DoRA issue): step time ≤ 1.2× and peak RSS ≤ 1.1×.
    /// </summary>
    static string TargetText(Variant v, double speed, double peak, double growth, double heapGrowth) => v.BaselineName is null
        ? (speed >= TargetSpeedup ? "met" : "not met") + (v.Name == "lora"
            ? string.Create(Inv, $"; growth ≤ {TargetGrowth}×: {(growth <= TargetGrowth ? "met" : "not met")} (RSS)") +
              (double.IsNaN(heapGrowth) ? "" : $", {(heapGrowth <= TargetGrowth ? "met" : "not met")} (live heap)")
            : "")
        : string.Create(Inv, $"step time {1 / speed:0.00}× (≤ 1.2×: {(1 / speed <= 1.2 ? "met" : "not met")}), peak {peak:0.00}× (≤ 1.1×: {(peak <= 1.1 ? "met" : "not met")})");

    /// <summary>Data parallelism (issue 16): N ranks × threads/N against 1 process × threads, tokens/s ≥ 0.9×; and rank 0's share of time in communication.</summary>
    string DataParallelText(Variant v, double speed) =>
        string.Create(Inv, $"tokens/s {speed:0.00}× of 1 process (≥ 0.9×: {(speed >= 0.9 ? "met" : "not met")}); communication {100 * Median(Of(v).Select(m => m.CommunicationShare ?? double.NaN)):0.0}% of rank 0's step time")
        ;

    static double Growth(Measurement m) => m.PeakRssBytes - m.RssBeforeTrainingBytes;

    /// <summary>Median peak live native heap of the runs (NaN where glibc's mallinfo2 was missing).</summary>
    static double PeakHeap(IReadOnlyList<Measurement> ms) => Median(ms.Where(m => m.PeakHeapBytes is not null).Select(m => (double)m.PeakHeapBytes!.Value));

    /// <summary>Median of (peak live native heap − live native heap before the loop): what training itself holds at its peak, without allocator slack.</summary>
    static double HeapGrowth(IReadOnlyList<Measurement> ms) =>
        Median(ms.Where(m => m.PeakHeapBytes is not null && m.HeapBeforeTrainingBytes is not null).Select(m => (double)(m.PeakHeapBytes!.Value - m.HeapBeforeTrainingBytes!.Value)));

    /// <summary>Issue 8: QLoRA against LoRA in the same run — tokens/s ≥ 0.8×, peak RSS below LoRA's; and the peak live native heap beside it.</summary>
    string? QLoraAgainstLora()
    {
        var (q, l) = (Variant.Find("qlora")!, Variant.Find("lora")!);
        if (!variants.Contains(q) || !variants.Contains(l) || Compare(q, l) is not { } c) return null;
        var (qs, ls) = (Of(q), Of(l));
        double cpu = Median(qs.Select(m => m.MedianStepCpuSeconds ?? double.NaN)) / Median(ls.Select(m => m.MedianStepCpuSeconds ?? double.NaN));
        double heap = PeakHeap(qs) / PeakHeap(ls);
        var rss = qs.Zip(ls, (x, y) => $"{Mib(x.PeakRssBytes)} vs {Mib(y.PeakRssBytes)}");
        var sb = new StringBuilder();
        sb.AppendLine("| qlora / lora | tokens/s (of medians) | tokens/s, per round | CPU s per step | peak RSS | peak RSS per round (qlora vs lora) | peak native heap |");
        sb.AppendLine("|---|---:|---:|---:|---:|---|---:|");
        sb.AppendLine(string.Create(Inv,
            $"| target | ≥ 0.8×: {(c.Speed >= 0.8 ? "met" : "not met")} | | | < 1: {(c.Peak < 1 ? "met" : "not met")} | | |"));
        sb.AppendLine(string.Create(Inv,
            $"| measured | {c.Speed:0.000}× | {string.Join(", ", c.Paired.Select(p => p.ToString("0.00", Inv)))} | {cpu:0.000}× | {c.Peak:0.000}× | {string.Join("; ", rss)} | {heap:0.000}× ({Mib(PeakHeap(qs))} vs {Mib(PeakHeap(ls))}) |"));
        return sb.ToString();
    }

    public string Table()
    {
        var sb = new StringBuilder();
        sb.AppendLine("| variant | runs | tokens/s, median (min–max) | median step | peak RSS, median | peak − RSS before training | peak native heap, median | native heap added by training | trainable params | weights | gradients | AdamW state |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var v in variants)
        {
            var ms = Of(v);
            if (ms.Count == 0)
            {
                var why = SkippedReason(v) ?? "no run";
                sb.AppendLine($"| {v.Name} | 0 | skipped: {Escape(why)} | | | | | | | | | |");
                continue;
            }
            var tps = ms.Select(m => m.TokensPerSecond).ToList();
            var first = ms[0];
            sb.AppendLine(string.Create(Inv,
                $"| {v.Name} | {ms.Count} | {Median(tps):0} ({tps.Min():0}–{tps.Max():0}) | {Median(ms.Select(m => m.MedianStepSeconds)):0.00} s | " +
                $"{Mib(Median(ms.Select(m => (double)m.PeakRssBytes)))} | {Mib(Median(ms.Select(Growth)))} | {Mib(PeakHeap(ms))} | {Mib(HeapGrowth(ms))} | " +
                $"{first.TrainableParameters:N0} of {first.TotalParameters:N0} | {TrainingSummary.Bytes(first.WeightBytes)} | " +
                $"{TrainingSummary.Bytes(first.GradientBytes)} | {TrainingSummary.Bytes(first.OptimizerStateBytes)} |"));
        }
        var comparisons = variants.Select(v => (v, c: Compare(v))).Where(x => x.c is not null).ToList();
        if (comparisons.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("| ratio | tokens/s (of medians) | tokens/s, per round | peak RSS | peak − RSS before training | native heap added by training | target: tokens/s ≥ 1.5× |");
            sb.AppendLine("|---|---:|---:|---:|---:|---:|---|");
            foreach (var (v, c) in comparisons)
            {
                var (speed, peak, growth, paired) = c!.Value;
                double heapGrowth = HeapGrowth(Of(v)) / HeapGrowth(Of(v.Baseline!));
                sb.AppendLine(string.Create(Inv,
                    $"| {v.Name} / {v.Baseline!.Name} | {speed:0.000}× | {string.Join(", ", paired.Select(p => p.ToString("0.00", Inv)))} | " +
                    $"{peak:0.00}× | {growth:0.00}× | {(double.IsNaN(heapGrowth) ? "–" : heapGrowth.ToString("0.00", Inv) + "×")} | {(v.Ranks > 1 ? DataParallelText(v, speed) : TargetText(v, speed, peak, growth, heapGrowth))} |"));
            }
        }
        if (QLoraAgainstLora() is { } q)
        {
            sb.AppendLine();
            sb.Append(q);
        }
        var anchors = variants.Select(v => (v, twin: v.HandWrittenTwin)).Where(x => x.twin is not null && variants.Contains(x.twin))
            .Select(x => (x.v, x.twin, c: Compare(x.v, x.twin!))).Where(x => x.c is not null).ToList();
        if (anchors.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("| framework / hand-written TorchSharp step | tokens/s (of medians) | tokens/s, per round | peak RSS | peak − RSS before training | target |");
            sb.AppendLine("|---|---:|---:|---:|---:|---|");
            foreach (var (v, twin, c) in anchors)
            {
                var (speed, peak, growth, paired) = c!.Value;
                string target = v.Name == "lora" ? string.Create(Inv, $"tokens/s ≥ {TargetOverHandWritten}×: {(speed >= TargetOverHandWritten ? "met" : "not met")}") : "";
                sb.AppendLine(string.Create(Inv,
                    $"| {v.Name} / {twin!.Name} | {speed:0.000}× | {string.Join(", ", paired.Select(p => p.ToString("0.00", Inv)))} | {peak:0.00}× | {growth:0.00}× | {target} |"));
            }
        }
        return sb.ToString();
    }

    /// <summary>The --breakdown table (empty without it): median seconds per phase of a step, one column per variant.</summary>
    public string BreakdownTable()
    {
        var byVariant = BreakdownMedians();
        if (byVariant.Count == 0) return "";
        var sb = new StringBuilder();
        sb.AppendLine("| phase of a step (median s) | " + string.Join(" | ", byVariant.Select(b => b.Key)) + " |");
        sb.AppendLine("|---|" + string.Concat(byVariant.Select(_ => "---:|")));
        foreach (var phase in PhaseBreakdown.Phases)
            sb.AppendLine($"| {phase} | " + string.Join(" | ", byVariant.Select(b => b.Value[phase].ToString("0.000", Inv))) + " |");
        sb.AppendLine("| sum | " + string.Join(" | ", byVariant.Select(b => b.Value.Values.Sum().ToString("0.000", Inv))) + " |");
        return sb.ToString();
    }

    /// <summary>Per variant (in run order), per phase: the median over its breakdown runs of each run's median phase time.</summary>
    public IReadOnlyList<KeyValuePair<string, Dictionary<string, double>>> BreakdownMedians() =>
        breakdowns.Where(b => b.PhaseMedianSeconds is not null).GroupBy(b => b.Variant)
            .Select(g => new KeyValuePair<string, Dictionary<string, double>>(g.Key,
                PhaseBreakdown.Phases.ToDictionary(p => p, p => Median(g.Select(b => b.PhaseMedianSeconds![p])))))
            .ToList();

    static string Escape(string s) => s.Replace("|", "\\|").Replace("\n", " ");

    public string Markdown(string command, IReadOnlyList<string> machine, string loadBefore, string loadAfter, TimeSpan wall)
    {
        var sb = new StringBuilder();
        var o = options;
        sb.AppendLine("# Benchmarks: LoRA vs full fine-tuning");
        sb.AppendLine();
        sb.AppendLine("Throughput (tokens/s) and peak resident memory of one training loop (`Trainer.Run`, the loop `peft train` runs) " +
                      "with LoRA and with full fine-tuning, on a **randomly initialised** Llama of llama2.c stories15M's shape " +
                      "(dim 288, 6 layers, 6 heads, 6 KV heads, hidden 768, vocab 32000, 256 positions, tied embeddings; 15.2 M parameters) " +
                      "trained on uniform random token ids (no tokenizer, no padding).");
        sb.AppendLine();
        sb.AppendLine("## Result");
        sb.AppendLine();
        sb.Append(Table());
        sb.AppendLine();
        if (breakdowns.Count > 0)
        {
            sb.AppendLine(string.Create(Inv, $"Where a step's time goes (`--breakdown`: in every round one extra child per variant runs the trainer's step calls by hand with a clock around each phase, {breakdowns[0].WarmupSteps} warm-up + {breakdowns[0].TimedSteps} timed steps; median over the rounds of each child's median):"));
            sb.AppendLine();
            sb.Append(BreakdownTable());
            sb.AppendLine();
        }
        sb.AppendLine("## Interpretation");
        sb.AppendLine();
        foreach (var line in Interpretation()) sb.AppendLine(line);
        sb.AppendLine();
        sb.AppendLine("## How it was measured");
        sb.AppendLine();
        sb.AppendLine("```");
        sb.AppendLine(command);
        sb.AppendLine("```");
        sb.AppendLine();
        sb.AppendLine(string.Create(Inv,
            $"- Workload: batch {o.BatchSize} × {o.SeqLen} tokens = {o.BatchSize * o.SeqLen} tokens per optimizer step, " +
            $"{o.WarmupSteps} warm-up steps (untimed), then {o.Steps} timed steps; AdamW (lr 1e-4 constant, weight decay 0), " +
            $"gradient clipping at 1.0, no evaluation, no checkpoints, fp32."));
        sb.AppendLine("- LoRA: r = 16, lora_alpha = 32, dropout 0, on q_proj, k_proj, v_proj, o_proj of every layer (the LoRA plugin, loaded from `plugins/` as the host loads it). " +
                      "Full fine-tuning trains every parameter (the tied embedding/head once).");
        sb.AppendLine(string.Create(Inv,
            $"- Each run is a fresh child process (`Peft.Bench --one VARIANT ...`); variants alternate within each of {o.Rounds} round(s) " +
            $"({string.Join(", ", variants.Select(v => v.Name))}), so slow phases of the machine hit every variant alike. " +
            $"`torch.set_num_threads({o.Threads})` in every child."));
        sb.AppendLine("- tokens/s = batch × seq_len × timed steps ÷ (trainer clock at the end of the last step − at the end of the last warm-up step); " +
                      "each step includes forward, loss, backward, gradient clipping, the AdamW step and zeroing the gradients. " +
                      "The table gives the median over the runs of each variant; \"median step\" is the median of each run's median step time.");
        sb.AppendLine("- peak RSS = VmHWM of the child at the end (/proc/self/status): .NET runtime + LibTorch + model + data + the training peak. " +
                      "\"peak − RSS before training\" subtracts VmRSS taken just before the loop, i.e. what training itself added " +
                      "(activations, logits, gradients, optimizer state, allocator caches).");
        sb.AppendLine("- peak native heap = the highest live C-heap figure (glibc mallinfo2: bytes in use in every arena + in mmapped chunks) " +
                      "sampled every 5 ms during the loop (`HeapPeakSampler`): LibTorch's tensors and every other malloc alive at once, " +
                      "without the free chunks glibc keeps resident. It is the figure that separates variants whose difference is smaller " +
                      "than VmHWM's run-to-run spread; the runtime's own code and the .NET heap are not in it.");
        sb.AppendLine("- The labels are random, so there is nothing to learn: the loss stays near ln 32000 ≈ 10.4; the trainer would stop on a non-finite loss.");
        sb.AppendLine("- Trainable parameters and the bytes of weights, gradients and AdamW state come from the trainer's `TrainingSummary` at the end of the run.");
        sb.AppendLine("- Ratios: \"of medians\" divides the variants' medians; \"per round\" divides the k-th LoRA run by the k-th full run (neighbours in time).");
        sb.AppendLine();
        sb.AppendLine("## Machine");
        sb.AppendLine();
        foreach (var line in machine) sb.AppendLine($"- {line}");
        sb.AppendLine($"- load average (1, 5, 15 min) before: {loadBefore}; after: {loadAfter}");
        sb.AppendLine(string.Create(Inv, $"- wall time of the whole bench: {wall.TotalSeconds:0} s"));
        sb.AppendLine("- The machine was shared: other builds and test runs were using the same 2 cores while this ran, so absolute numbers are noisy " +
                      "and lower than on an idle machine; the alternation and the per-round ratios are there to keep the comparison fair despite that. " +
                      "With 2 torch threads on 2 shared cores the OpenMP threads wait for each other whenever another process takes a core: under a load " +
                      "average around 7, steps took 4–9 s instead of about 1 s (and varied 2× within one run). `--threads 1` is steadier on a busy machine, " +
                      "slower on an idle one.");
        return sb.ToString();
    }

    IEnumerable<string> Interpretation()
    {
        var lora = variants.FirstOrDefault(v => v.Name == "lora");
        if (lora is not null && Compare(lora) is { } c)
        {
            var (speed, peak, growth, paired) = c;
            var full = Of(lora.Baseline!);
            var l = Of(lora);
            yield return string.Create(Inv,
                $"- On this CPU, LoRA trains at **{speed:0.000}×** full fine-tuning's tokens/s (per round: {string.Join(", ", paired.Select(p => p.ToString("0.00", Inv)))}); " +
                $"the issue's target of {TargetSpeedup:0.0}× is **{(speed >= TargetSpeedup ? "met" : "not met")}** here (the seed reports 1.6× on a GPU).");
            yield return string.Create(Inv,
                $"- Peak RSS is {peak:0.00}× full fine-tuning's ({Mib(Median(l.Select(m => (double)m.PeakRssBytes)))} vs {Mib(Median(full.Select(m => (double)m.PeakRssBytes)))}); " +
                $"what training adds on top of the loaded model is {growth:0.00}× ({Mib(Median(l.Select(Growth)))} vs {Mib(Median(full.Select(Growth)))}).");
            yield return string.Create(Inv,
                $"- Where the difference comes from: LoRA trains {l[0].TrainableParameters:N0} parameters instead of {full[0].TrainableParameters:N0}, " +
                $"so gradients shrink from {TrainingSummary.Bytes(full[0].GradientBytes)} to {TrainingSummary.Bytes(l[0].GradientBytes)} and AdamW state " +
                $"from {TrainingSummary.Bytes(full[0].OptimizerStateBytes)} to {TrainingSummary.Bytes(l[0].OptimizerStateBytes)}; the backward pass skips the " +
                $"weight-gradient matmuls of every frozen layer (including the 32000 × 288 tied head/embedding, {32000.0 * 288 / full[0].TotalParameters * 100:0} % of the model) " +
                $"and the optimizer step touches {l[0].TrainableParameters / 1e6:0.00} M instead of {full[0].TrainableParameters / 1e6:0.0} M parameters.");
            yield return string.Create(Inv, $"- What LoRA does not save: the forward pass, the backward pass through the activations (it still needs the input gradients of every layer), " +
                         $"and the logits: batch × seq_len × 32000 fp32 values ({options.BatchSize * options.SeqLen * 32000.0 * 4 / 1048576:0} MiB at batch {options.BatchSize}, plus their log-softmax and gradient) are a large part of the activation memory of a model this small, " +
                         $"for both variants alike. The memory ratio is therefore much closer to 1 than the parameter ratio.");
        }
        var medians = BreakdownMedians();
        var bFull = medians.FirstOrDefault(b => b.Key == "full").Value;
        var bLora = medians.FirstOrDefault(b => b.Key == "lora").Value;
        if (bFull is not null && bLora is not null)
        {
            double fullSum = bFull.Values.Sum(), loraSum = bLora.Values.Sum();
            double fixedFull = bFull["forward"] + bFull["loss"], fixedLora = bLora["forward"] + bLora["loss"];
            yield return string.Create(Inv,
                $"- Where a step's time goes (breakdown): forward + loss take {fixedFull:0.00} s of full fine-tuning's {fullSum:0.00} s step " +
                $"and {fixedLora:0.00} s of LoRA's {loraSum:0.00} s, the same work for both (LoRA's forward also runs its small A·B products). " +
                $"LoRA saves in backward ({bFull["backward"]:0.00} → {bLora["backward"]:0.00} s) and in clipping + AdamW " +
                $"({bFull["clip"] + bFull["optimizer"]:0.00} → {bLora["clip"] + bLora["optimizer"]:0.00} s). Its backward still costs " +
                $"{bLora["backward"] / bLora["forward"]:0.0}× its forward: the gradients with respect to the activations (through every frozen linear, " +
                $"the 32000-wide tied head, softmax, SiLU, RMSNorm and RoPE) are needed by LoRA exactly as by full fine-tuning; only the " +
                $"weight-gradient matmuls and the optimizer work go away. With most of the parameters in the head and a 32000-way softmax " +
                $"on {options.SeqLen}-token sequences, that fixed share is large on this small model.");
        }
        if (lora is null || Compare(lora) is null)
        {
            yield return "- LoRA and full fine-tuning were not both measured in this run, so there is no ratio.";
        }
        foreach (var group in variants.Where(v => Of(v).Count == 0).GroupBy(v => SkippedReason(v) ?? "not run"))
            yield return $"- {string.Join(" and ", group.Select(v => $"`{v.Name}`"))} skipped: {group.Key}.";
    }

    public string RunsJson() => JsonSerializer.Serialize(runs, new JsonSerializerOptions { WriteIndented = false });
}
