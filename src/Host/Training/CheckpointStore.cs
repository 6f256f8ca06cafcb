using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Peft.Abstractions;
using Peft.Host.Formats;

namespace Peft.Host.Training;

/// <summary>
/// The scalar state of a run in <c>trainer_state.json</c>: where the optimizer, the schedule, the random
/// generators and the data stream stand after <see cref="GlobalStep"/> steps, plus what must not change for
/// a resume to continue the same run.
/// </summary>
public sealed record TrainerState
{
    public const int CurrentVersion = 1;

    [JsonPropertyName("version")] public int Version { get; init; } = CurrentVersion;

    /// <summary>Optimizer steps completed; the next step is GlobalStep + 1 (1-based), the schedule's index GlobalStep.</summary>
    [JsonPropertyName("global_step")] public int GlobalStep { get; init; }
    [JsonPropertyName("total_steps")] public int TotalSteps { get; init; }
    [JsonPropertyName("lr_scheduler")] public string LrScheduler { get; init; } = "";
    [JsonPropertyName("scheduler_step")] public int SchedulerStep { get; init; }
    [JsonPropertyName("seed")] public int Seed { get; init; }

    /// <summary>The epoch and index of the next training example (the data order of an epoch is derived from seed and epoch).</summary>
    [JsonPropertyName("data_epoch")] public int DataEpoch { get; init; }
    [JsonPropertyName("data_index")] public int DataIndex { get; init; }
    [JsonPropertyName("data_shuffle")] public bool DataShuffle { get; init; }
    [JsonPropertyName("train_examples")] public int TrainExamples { get; init; }
    [JsonPropertyName("batch_size")] public int BatchSize { get; init; }
    [JsonPropertyName("gradient_accumulation_steps")] public int GradientAccumulationSteps { get; init; }

    /// <summary>torch's default CPU generator state (<c>torch.get_rng_state()</c>), base64.</summary>
    [JsonPropertyName("torch_rng_state")] public string TorchRngState { get; init; } = "";

    [JsonPropertyName("elapsed_s")] public double ElapsedSeconds { get; init; }
    [JsonPropertyName("loss")] public double? Loss { get; init; }
    [JsonPropertyName("trainable_parameters")] public IReadOnlyList<string> TrainableParameters { get; init; } = [];

    /// <summary>The training hooks' states (<see cref="HookStates"/>), absent when the run has no hooks.</summary>
    [JsonPropertyName("hooks"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public System.Text.Json.Nodes.JsonArray? Hooks { get; init; }
}

/// <summary>
/// Checkpoints under <c>{output}/checkpoints/step-N</c>, each written whole or not at all
/// (<see cref="AtomicFile.WriteDirectory"/>): <c>trainable.safetensors</c> (the trainable weights by name),
/// <c>optimizer.safetensors</c> (optimizer state and step counters), <c>trainer_state.json</c>, plus what the
/// run's <see cref="ITrainingOutput"/> adds. Old ones are pruned only after the new one is in place.
/// </summary>
public static class CheckpointStore
{
    public const string Folder = "checkpoints";
    public const string Prefix = "step-";
    public const string TrainableFile = "trainable.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string StateFile = "trainer_state.json";

    static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    public static string Root(string outputDirectory) => Path.Combine(outputDirectory, Folder);

    public static string PathOf(string outputDirectory, int step) => Path.Combine(Root(outputDirectory), Prefix + step.ToString(CultureInfo.InvariantCulture));

    /// <summary>Complete checkpoints (folders step-N holding trainer_state.json), oldest first.</summary>
    public static IReadOnlyList<(int Step, string Path)> List(string outputDirectory)
    {
        var root = Root(outputDirectory);
        if (!Directory.Exists(root)) return [];
        var result = new List<(int, string)>();
        foreach (var dir in Directory.GetDirectories(root))
        {
            var name = System.IO.Path.GetFileName(dir);
            if (!name.StartsWith(Prefix, StringComparison.Ordinal)) continue;
            if (!int.TryParse(name[Prefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out var step)) continue;
            if (!File.Exists(System.IO.Path.Combine(dir, StateFile))) continue;
            result.Add((step, dir));
        }
        return result.OrderBy(x => x.Item1).ToList();
    }

    /// <summary>The folder <c>training:resume</c> names: "latest" = newest checkpoint of the output folder, else a checkpoint folder.</summary>
    public static string Resolve(string resume, string outputDirectory)
    {
        if (resume == "latest")
        {
            var all = List(outputDirectory);
            if (all.Count == 0) throw new PeftConfigurationException("training:resume", resume, $"there is no checkpoint under {Root(outputDirectory)}");
            return all[^1].Path;
        }
        if (!Directory.Exists(resume)) throw new PeftConfigurationException("training:resume", resume, "folder not found");
        if (!File.Exists(Path.Combine(resume, StateFile)))
            throw new PeftConfigurationException("training:resume", resume, $"is not a checkpoint folder (it has no {StateFile})");
        return resume;
    }

    public static void Write(string directory, TrainerState state, IReadOnlyDictionary<string, TorchSharp.torch.Tensor> trainable,
        IReadOnlyDictionary<string, TorchSharp.torch.Tensor> optimizerState, ITrainingOutput output)
    {
        AtomicFile.WriteDirectory(directory, tmp =>
        {
            Safetensors.Save(Path.Combine(tmp, TrainableFile), trainable, new Dictionary<string, string> { ["format"] = "pt" });
            Safetensors.Save(Path.Combine(tmp, OptimizerFile), optimizerState);
            output.WriteCheckpoint(tmp);
            // the state file last: a folder without it is not a checkpoint
            AtomicFile.WriteText(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state, JsonOptions));
        });
    }

    public static TrainerState ReadState(string directory)
    {
        var path = Path.Combine(directory, StateFile);
        try
        {
            var state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path)) ?? throw new JsonException("empty document");
            if (state.Version != TrainerState.CurrentVersion)
                throw new PeftFormatException($"{path}: trainer state version {state.Version} is not supported (expected {TrainerState.CurrentVersion})");
            return state;
        }
        catch (JsonException e) { throw new PeftFormatException($"{path}: not a valid trainer state ({e.Message})"); }
    }

    /// <summary>Delete all but the newest <paramref name="keepLast"/> checkpoints (0 = keep all).</summary>
    public static void Prune(string outputDirectory, int keepLast)
    {
        if (keepLast <= 0) return;
        var all = List(outputDirectory);
        foreach (var (_, path) in all.Take(Math.Max(0, all.Count - keepLast)))
            Directory.Delete(path, recursive: true);
    }
}
