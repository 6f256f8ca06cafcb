using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Formats;

namespace Peft.Host.Training;

/// <summary>
/// <c>metrics.jsonl</c>: one JSON object per line, appended and flushed as the run goes.
/// Training lines: <c>{"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "epoch"}</c> (loss = mean
/// over the steps since the previous line); evaluation lines: <c>{"step", "eval_loss", "eval_tokens", "elapsed_s"}</c>;
/// hook lines: <c>{"step", ...}</c> as the hook records them (LISA: <c>"hook": "lisa", "active_layers": [...]</c>).
/// </summary>
public sealed class MetricsLog
{
    public const string FileName = "metrics.jsonl";

    public MetricsLog(string outputDirectory, int resumedFromStep)
    {
        Path = System.IO.Path.Combine(outputDirectory, FileName);
        // A fresh run starts a new file; a resumed run keeps the lines up to its checkpoint (later ones were
        // written by the interrupted run after the checkpoint and will be written again).
        var kept = resumedFromStep > 0 && File.Exists(Path)
            ? File.ReadLines(Path).Where(line => StepOf(line) is { } s && s <= resumedFromStep).ToList()
            : [];
        AtomicFile.WriteText(Path, kept.Count == 0 ? "" : string.Join('\n', kept) + "\n");
    }

    public string Path { get; }

    public void LogTrain(int step, double loss, double learningRate, double gradNorm, double tokensPerSecond, double elapsedSeconds, double epoch) =>
        Append(new JsonObject
        {
            ["step"] = step,
            ["loss"] = Finite(loss),
            ["lr"] = learningRate,
            ["grad_norm"] = Finite(gradNorm),
            ["tokens_per_s"] = Math.Round(tokensPerSecond, 1),
            ["elapsed_s"] = Math.Round(elapsedSeconds, 3),
            ["epoch"] = Math.Round(epoch, 4),
        });

    public void LogEval(int step, double loss, long tokens, double elapsedSeconds) =>
        Append(new JsonObject { ["step"] = step, ["eval_loss"] = Finite(loss), ["eval_tokens"] = tokens, ["elapsed_s"] = Math.Round(elapsedSeconds, 3) });

    /// <summary>A hook's line (<see cref="Peft.Abstractions.Training.TrainingContext.Record"/>): <c>{"step", ...the hook's fields}</c>.</summary>
    public void LogEvent(int step, JsonObject fields)
    {
        var line = new JsonObject { ["step"] = step };
        foreach (var (key, value) in fields)
            if (key != "step") line[key] = value?.DeepClone();
        Append(line);
    }

    /// <summary>(step, loss) of the training lines and of the evaluation lines, for the loss curve.</summary>
    public static (List<(int Step, double Loss)> Train, List<(int Step, double Loss)> Eval) ReadCurves(string path)
    {
        var train = new List<(int, double)>();
        var eval = new List<(int, double)>();
        if (!File.Exists(path)) return (train, eval);
        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonObject? o;
            try { o = JsonNode.Parse(line) as JsonObject; } catch (JsonException) { continue; }
            if (o?["step"] is not JsonValue s || !s.TryGetValue<int>(out var step)) continue;
            if (o["loss"] is JsonValue l && l.TryGetValue<double>(out var loss)) train.Add((step, loss));
            if (o["eval_loss"] is JsonValue e && e.TryGetValue<double>(out var evalLoss)) eval.Add((step, evalLoss));
        }
        return (train, eval);
    }

    void Append(JsonObject line)
    {
        using var stream = new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read);
        stream.Write(Encoding.UTF8.GetBytes(line.ToJsonString() + "\n"));
        stream.Flush(flushToDisk: false);
    }

    // JSON has no NaN/Infinity: write them as strings so the line stays valid JSON.
    static JsonNode? Finite(double v) => double.IsFinite(v) ? JsonValue.Create(v) : JsonValue.Create(v.ToString(CultureInfo.InvariantCulture));

    static int? StepOf(string line)
    {
        try { return JsonNode.Parse(line)?["step"]?.GetValue<int>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }
}
