using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Training;
using static TorchSharp.torch;

namespace Peft.Tests.Training;

/// <summary>
/// The trainer tests' result writer: every parameter of the model under its name in <c>model.safetensors</c>
/// (tied weights once). The host writes full fine-tuning as an HF model folder (Composition.HfModelOutput),
/// which needs a Llama; the trainer tests run on <see cref="TinyCausalLm"/>.
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
