using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Training;

namespace Peft.Host.Comparison;

/// <summary>One method's line of the comparison: what its own run folder says (training_summary.json, metrics.jsonl).</summary>
public sealed class ComparisonRow
{
    public required string Method { get; init; }

    /// <summary>ok | failed | missing.</summary>
    public required string Status { get; init; }

    /// <summary>Why a method failed or is missing (its error line); null when ok.</summary>
    public string? Note { get; init; }

    public double? HeldOutLoss { get; init; }
    public double? Improvement { get; init; }
    public double? QualityRelative { get; init; }
    public double? TokensPerSecond { get; init; }
    public double? TokensPerSecondRelative { get; init; }
    public long? TrainableParameters { get; init; }
    public long? WeightBytes { get; init; }
    public long? GradientBytes { get; init; }
    public long? OptimizerStateBytes { get; init; }

    /// <summary>The run's own peak-memory figure when its training_summary.json has one (the first numeric <c>peak*</c> field), else null.</summary>
    public long? SummaryPeakBytes { get; init; }
    public string? SummaryPeakField { get; init; }

    /// <summary>The child process's peak resident set (VmHWM, Linux), sampled by <c>peft compare</c> while it ran.</summary>
    public long? PeakRssBytes { get; init; }
    public double? ElapsedSeconds { get; init; }
    public IReadOnlyList<(int Step, double Loss)> EvalCurve { get; init; } = [];

    /// <summary>
    /// Read a finished run folder. Tokens/s is the median of the run's metrics.jsonl <c>tokens_per_s</c> lines
    /// (each the step time only, no evaluation or checkpoint time); the held-out loss is the summary's final_eval_loss.
    /// </summary>
    public static ComparisonRow FromRun(string method, string runDirectory, long? peakRss)
    {
        var summaryPath = Path.Combine(runDirectory, "training_summary.json");
        var summary = JsonNode.Parse(File.ReadAllText(summaryPath))!.AsObject();
        var rates = new List<double>();
        var metricsPath = Path.Combine(runDirectory, MetricsLog.FileName);
        if (File.Exists(metricsPath))
            foreach (var line in File.ReadLines(metricsPath))
                if (!string.IsNullOrWhiteSpace(line) && JsonNode.Parse(line) is JsonObject o && o["tokens_per_s"] is JsonValue v && v.TryGetValue<double>(out var r))
                    rates.Add(r);
        var (_, eval) = MetricsLog.ReadCurves(metricsPath);
        // the run's own peak figure: held_memory.peak_process_bytes (issue 13's held-memory report), else a top-level peak* field
        var held = summary["held_memory"] as JsonObject;
        var peak = held?["peak_process_bytes"] is JsonValue hp && hp.TryGetValue<long>(out _)
            ? new KeyValuePair<string, JsonNode?>("held_memory.peak_process_bytes", hp)
            : summary.FirstOrDefault(kv => kv.Key.StartsWith("peak", StringComparison.Ordinal) && kv.Value is JsonValue pv && pv.TryGetValue<long>(out _));
        return new ComparisonRow
        {
            Method = method,
            Status = "ok",
            HeldOutLoss = Double(summary["final_eval_loss"]),
            TokensPerSecond = rates.Count == 0 ? null : Median(rates),
            TrainableParameters = Long(summary["trainable_parameters"]),
            WeightBytes = Long(summary["weight_bytes"]),
            GradientBytes = Long(summary["gradient_bytes"]),
            OptimizerStateBytes = Long(summary["optimizer_state_bytes"]),
            SummaryPeakField = peak.Key,
            SummaryPeakBytes = peak.Key is null ? null : peak.Value!.GetValue<long>(),
            PeakRssBytes = peakRss,
            ElapsedSeconds = Double(summary["elapsed_s"]),
            EvalCurve = eval,
        };
    }

    public static double Median(IReadOnlyList<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    static double? Double(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
    static long? Long(JsonNode? n) => n is JsonValue v && v.TryGetValue<long>(out var d) ? d : null;
}

/// <summary>
/// The comparison of every method against full fine-tuning:
/// <code>
///   improvement_m      = L0 − L_m                     L0: held-out loss of the untouched base model, L_m: after training
///   quality_relative_m = improvement_m / improvement_full
///   speed_relative_m   = tokens_per_s_m / tokens_per_s_full
/// </code>
/// written as <c>compare.md</c> and <c>compare.json</c>.
/// </summary>
public sealed class ComparisonTable
{
    public const string MarkdownFile = "compare.md";
    public const string JsonFile = "compare.json";
    public const string PlotFile = "held_out_loss.png";

    public required double? BaseHeldOutLoss { get; init; }
    public required IReadOnlyList<ComparisonRow> Rows { get; init; }
    public JsonObject Context { get; init; } = new();

    /// <summary>Fill the relative columns against the <c>full</c> row (none when full is missing or failed).</summary>
    public static ComparisonTable Build(double? baseLoss, IReadOnlyList<ComparisonRow> rows, JsonObject context)
    {
        var full = rows.FirstOrDefault(r => r.Method == Composition.FullFineTuning.Name && r.Status == "ok");
        double? fullImprovement = baseLoss is { } b && full?.HeldOutLoss is { } lf ? b - lf : null;
        var filled = rows.Select(r =>
        {
            if (r.Status != "ok") return r;
            double? improvement = baseLoss is { } l0 && r.HeldOutLoss is { } l ? l0 - l : null;
            return new ComparisonRow
            {
                Method = r.Method, Status = r.Status, Note = r.Note, HeldOutLoss = r.HeldOutLoss,
                Improvement = improvement,
                QualityRelative = improvement is { } i && fullImprovement is { } fi && fi != 0 ? i / fi : null,
                TokensPerSecond = r.TokensPerSecond,
                TokensPerSecondRelative = r.TokensPerSecond is { } t && full?.TokensPerSecond is { } tf && tf > 0 ? t / tf : null,
                TrainableParameters = r.TrainableParameters, WeightBytes = r.WeightBytes, GradientBytes = r.GradientBytes,
                OptimizerStateBytes = r.OptimizerStateBytes, SummaryPeakBytes = r.SummaryPeakBytes, SummaryPeakField = r.SummaryPeakField,
                PeakRssBytes = r.PeakRssBytes, ElapsedSeconds = r.ElapsedSeconds, EvalCurve = r.EvalCurve,
            };
        }).ToList();
        return new ComparisonTable { BaseHeldOutLoss = baseLoss, Rows = filled, Context = context };
    }

    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        string F(double? v, string format) => v is { } d ? d.ToString(format, CultureInfo.InvariantCulture) : "–";
        string B(long? v) => v is { } b ? TrainingSummary.Bytes(b) : "–";
        sb.Append(CultureInfo.InvariantCulture, $"Held-out loss of the base model before training: {F(BaseHeldOutLoss, "0.0000")}\n\n");
        sb.Append("| method | status | held-out loss | improvement | quality rel. to full | tokens/s | speed rel. to full | peak memory | trainable params | gradients | optimizer state |\n");
        sb.Append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        foreach (var r in Rows)
        {
            var status = r.Status == "ok" ? "ok" : $"{r.Status}: {r.Note?.Replace("|", "\\|")}";
            var peak = r.SummaryPeakBytes is not null ? B(r.SummaryPeakBytes) : r.PeakRssBytes is not null ? B(r.PeakRssBytes) + " (RSS)" : "–";
            sb.Append(CultureInfo.InvariantCulture,
                $"| {r.Method} | {status} | {F(r.HeldOutLoss, "0.0000")} | {F(r.Improvement, "0.0000")} | {F(r.QualityRelative, "0.00")} | {F(r.TokensPerSecond, "0")} | {F(r.TokensPerSecondRelative, "0.00")} | {peak} | {(r.TrainableParameters is { } p ? p.ToString("N0", CultureInfo.InvariantCulture) : "–")} | {B(r.GradientBytes)} | {B(r.OptimizerStateBytes)} |\n");
        }
        return sb.ToString();
    }

    public string ToJson()
    {
        static JsonNode? N(double? v) => v is { } d && double.IsFinite(d) ? JsonValue.Create(d) : null;
        static JsonNode? L(long? v) => v is { } d ? JsonValue.Create(d) : null;
        var rows = new JsonArray();
        foreach (var r in Rows)
            rows.Add(new JsonObject
            {
                ["method"] = r.Method, ["status"] = r.Status, ["note"] = r.Note,
                ["held_out_loss"] = N(r.HeldOutLoss), ["improvement"] = N(r.Improvement), ["quality_relative"] = N(r.QualityRelative),
                ["tokens_per_s"] = N(r.TokensPerSecond), ["tokens_per_s_relative"] = N(r.TokensPerSecondRelative),
                ["summary_peak_field"] = r.SummaryPeakField, ["summary_peak_bytes"] = L(r.SummaryPeakBytes), ["peak_rss_bytes"] = L(r.PeakRssBytes),
                ["trainable_parameters"] = L(r.TrainableParameters), ["weight_bytes"] = L(r.WeightBytes),
                ["gradient_bytes"] = L(r.GradientBytes), ["optimizer_state_bytes"] = L(r.OptimizerStateBytes),
                ["elapsed_s"] = N(r.ElapsedSeconds),
                ["eval_curve"] = new JsonArray(r.EvalCurve.Select(p => (JsonNode)new JsonArray(p.Step, p.Loss)).ToArray()),
            });
        var doc = new JsonObject { ["base_held_out_loss"] = N(BaseHeldOutLoss), ["context"] = Context.DeepClone(), ["rows"] = rows };
        return doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
