using Peft.Host.Formats;
using Peft.Host.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Training;

/// <summary>
/// Writes what a run produces in the format of its method: adapter files for PEFT methods (the lead plugs in an
/// adapter writer), full weights for full fine-tuning (<see cref="FullModelOutput"/>). The trainer keeps its own
/// copy of the trainable weights in every checkpoint for resuming, so a writer only adds files for people and tools.
/// </summary>
public interface ITrainingOutput
{
    /// <summary>Write the trained result into <paramref name="directory"/> (the run's output folder; it exists). Write each file atomically.</summary>
    void WriteFinal(string directory);

    /// <summary>Add files to a checkpoint being built in <paramref name="directory"/> (a temporary folder renamed into place afterwards).</summary>
    void WriteCheckpoint(string directory) { }
}

/// <summary>
/// Full fine-tuning's result: every parameter of the model under its HF name in <c>model.safetensors</c>
/// (stored dtype; tied weights once, under their first name). Checkpoints add nothing, since the trainer's
/// <c>trainable.safetensors</c> already holds every trained weight.
/// </summary>
public sealed class FullModelOutput(ICausalLanguageModel model) : ITrainingOutput
{
    public const string FileName = "model.safetensors";

    public void WriteFinal(string directory)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var seen = new HashSet<IntPtr>();
        foreach (var (name, p) in model.NamedParameters())
            if (seen.Add(p.Handle)) tensors[name] = p;
        Safetensors.Save(Path.Combine(directory, FileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}

/// <summary>Full fine-tuning (the baseline every PEFT method is compared with): every parameter trains.</summary>
public static class FullFineTuning
{
    /// <summary>Set requires_grad on every parameter and return them all (tied weights once) as the trainable list.</summary>
    public static IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters(ICausalLanguageModel model)
    {
        var result = new List<(string, Parameter)>();
        var seen = new HashSet<IntPtr>();
        foreach (var (name, p) in model.NamedParameters())
        {
            if (!seen.Add(p.Handle)) continue;
            if (!p.is_floating_point())
                throw new InvalidOperationException($"parameter '{name}' is stored as {p.dtype} and cannot be trained in full fine-tuning (a quantized model needs a PEFT method)");
            p.requires_grad_(true);
            result.Add((name, p));
        }
        return result;
    }
}
