using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Host.Formats;

namespace Peft.Host.Training;

/// <summary>
/// What <c>peft train</c> decides from <c>output:dir</c> and <c>--resume</c> before it imports, loads or evaluates
/// anything:
/// <list type="bullet">
/// <item>a fresh run into a folder that already holds a run is refused with the three ways on
///   (<c>--resume latest</c>, another <c>output:dir</c>, <c>--overwrite</c>); <c>--overwrite</c> removes only what
///   <c>peft train</c> writes there (<see cref="RunEntries"/>), never other files;</item>
/// <item>a resume reads the checkpoint's state (refusing a corrupt one) and refuses a method option that differs from
///   the checkpoint's adapter (naming both values); a resume of a finished run is a no-op that says so, unless
///   <c>training:max_steps</c> was raised ("train 200 more steps");</item>
/// <item>the output folder may not be, or lie inside, the model folder.</item>
/// </list>
/// </summary>
public static class RunFolderPreflight
{
    /// <summary>The entries of an output folder that <c>peft train</c> writes (and so may remove with <c>--overwrite</c>).</summary>
    public static readonly IReadOnlyList<string> RunEntries =
        [CheckpointStore.Folder, "adapter", "model", MetricsLog.FileName, "training_summary.json", LossCurvePlot.FileName, "logs"];

    /// <summary>The decision: go on (fresh or resumed), or stop with exit 0 because the run is already complete.</summary>
    public sealed record Decision(string? CompleteMessage, string? ResumeFrom);

    public static Decision Check(IConfiguration root, TrainingOptions training, string outputDir, string modelDir, bool overwrite)
    {
        if (File.Exists(outputDir)) throw new PeftConfigurationException("output:dir", outputDir, "is a file, not a folder");
        var output = FolderPaths.RealPath(outputDir);
        var model = FolderPaths.RealPath(modelDir);
        if (output == model || FolderPaths.IsInside(output, model))
            throw new PeftConfigurationException("output:dir", outputDir, $"is {(output == model ? "" : "inside ")}the model folder '{modelDir}'; write the run to a folder of its own");

        if (training.Resume is null)
        {
            var present = RunEntries.Where(e => File.Exists(Path.Combine(outputDir, e)) || Directory.Exists(Path.Combine(outputDir, e))).ToList();
            if (present.Count == 0) return new Decision(null, null);
            if (overwrite)
            {
                foreach (var entry in present) Remove(Path.Combine(outputDir, entry));
                return new Decision(null, null);
            }
            var checkpoints = CheckpointStore.List(outputDir);
            var what = checkpoints.Count > 0 ? $"checkpoints up to step {checkpoints[^1].Step}" : $"the files of an earlier run ({string.Join(", ", present)})";
            throw new PeftConfigurationException("output:dir", outputDir,
                $"already holds {what}. To continue that run: --resume latest (raise training:max_steps to train more steps); " +
                "to start a new run: choose another folder (--set output:dir=...), or add --overwrite to replace that run's files");
        }

        var checkpoint = CheckpointStore.Resolve(training.Resume, outputDir);
        var state = CheckpointStore.ReadState(checkpoint);
        CheckMethodUnchanged(root, checkpoint);

        int total = TotalSteps(training, state);
        if (state.GlobalStep >= total)
        {
            bool finalWritten = Directory.Exists(Path.Combine(outputDir, "adapter")) || Directory.Exists(Path.Combine(outputDir, "model"));
            if (state.GlobalStep > total)
                throw new PeftConfigurationException("training:max_steps", total.ToString(CultureInfo.InvariantCulture),
                    $"is below the checkpoint's step {state.GlobalStep} ({checkpoint}); to train more steps raise it above {state.GlobalStep}");
            if (finalWritten)
                return new Decision(
                    $"the run in {outputDir} is complete: step {state.GlobalStep} of {total} ({checkpoint}); nothing to do. " +
                    $"To train more steps, raise training:max_steps (e.g. --set training:max_steps={state.GlobalStep + Math.Max(1, state.GlobalStep / 2)} --resume latest)",
                    checkpoint);
        }
        return new Decision(null, checkpoint);
    }

    /// <summary>The run's total optimizer steps, as the trainer computes it, from the options and the checkpoint's data size.</summary>
    static int TotalSteps(TrainingOptions o, TrainerState state)
    {
        if (o.MaxSteps > 0) return o.MaxSteps;
        int microPerEpoch = (state.TrainExamples + o.BatchSize - 1) / o.BatchSize;
        return Math.Max(1, (int)Math.Ceiling(o.Epochs * microPerEpoch / o.GradientAccumulationSteps - 1e-9));
    }

    /// <summary>
    /// Every option set in the <c>method</c> section that the checkpoint's adapter (<c>adapter/adapter_config.json</c>)
    /// also records must have the same value: a resumed run keeps its method (rank, alpha, targets...).
    /// </summary>
    static void CheckMethodUnchanged(IConfiguration root, string checkpoint)
    {
        var method = root.GetSection("method");
        var name = method["name"];
        bool full = name is null || string.Equals(name, "full", StringComparison.OrdinalIgnoreCase);
        var adapterConfig = Path.Combine(checkpoint, "adapter", "adapter_config.json");
        bool hasAdapter = File.Exists(adapterConfig);
        if (full && hasAdapter)
            throw new PeftConfigurationException("method:name", name ?? "full",
                $"is full fine-tuning, but the checkpoint {checkpoint} was made by an adapter method; a resumed run keeps its method");
        if (!full && !hasAdapter)
        {
            if (Directory.Exists(checkpoint) && File.Exists(Path.Combine(checkpoint, CheckpointStore.StateFile)) && !Directory.Exists(Path.Combine(checkpoint, "adapter")))
                throw new PeftConfigurationException("method:name", name,
                    $"differs from the checkpoint {checkpoint}, which was made by full fine-tuning; a resumed run keeps its method");
            return;
        }
        if (!hasAdapter) return;

        JsonObject saved;
        try { saved = JsonNode.Parse(File.ReadAllText(adapterConfig)) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException e) { throw new PeftFormatException($"{adapterConfig}: not valid JSON ({e.Message})"); }

        foreach (var option in method.GetChildren())
        {
            if (option.Key.Equals("name", StringComparison.OrdinalIgnoreCase)) continue;
            if (!saved.TryGetPropertyValue(option.Key, out var then) || then is null) continue;
            var now = Describe(option);
            if (now is null) continue;
            if (!SameValue(option, then))
                throw new PeftConfigurationException($"method:{option.Key}", now,
                    $"differs from the checkpoint {checkpoint}, which was trained with {option.Key} = {DescribeJson(then)}; " +
                    "a resumed run keeps its method's options (to train with the new value start a new run: another output:dir, or --overwrite)");
        }
    }

    static string? Describe(IConfigurationSection s)
    {
        if (s.Value is not null) return s.Value;
        var items = s.GetChildren().ToList();
        if (items.Count == 0 || items.Any(i => i.Value is null)) return null; // nested objects are not compared
        return "[" + string.Join(", ", items.OrderBy(i => int.TryParse(i.Key, out var k) ? k : int.MaxValue).Select(i => i.Value)) + "]";
    }

    static string DescribeJson(JsonNode n) => n is JsonArray a ? "[" + string.Join(", ", a.Select(x => x is JsonValue v ? v.ToString() : x?.ToJsonString())) + "]" : n is JsonValue v ? v.ToString() : n.ToJsonString();

    static bool SameValue(IConfigurationSection now, JsonNode then)
    {
        if (now.Value is { } scalar)
        {
            if (then is JsonArray) return false;
            if (then is not JsonValue v) return true; // objects are not compared
            var text = v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : v.ToJsonString();
            if (double.TryParse(scalar, NumberStyles.Float, CultureInfo.InvariantCulture, out var a) &&
                double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var b))
                return a == b || Math.Abs(a - b) <= 1e-12 * Math.Max(Math.Abs(a), Math.Abs(b));
            return string.Equals(scalar, text, StringComparison.OrdinalIgnoreCase);
        }
        var items = now.GetChildren().Select(c => c.Value).ToList();
        if (items.Any(i => i is null)) return true;
        if (then is not JsonArray arr) return false;
        var saved = arr.Select(x => x is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : x?.ToJsonString()).ToList();
        return items.Order(StringComparer.Ordinal).SequenceEqual(saved.Order(StringComparer.Ordinal));
    }

    static void Remove(string path)
    {
        if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
        else if (File.Exists(path)) File.Delete(path);
    }
}
