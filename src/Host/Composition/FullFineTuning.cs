using Peft.Host.Model;
using TorchSharp.Modules;

namespace Peft.Host.Composition;

/// <summary>
/// Full fine-tuning (the baseline every PEFT method is compared with, <c>"method": { "name": "full" }</c> or no
/// method): every parameter trains. Its result is a complete HF model folder (<see cref="HfModelOutput"/>).
/// </summary>
public static class FullFineTuning
{
    /// <summary>The method name that selects full fine-tuning.</summary>
    public const string Name = "full";

    /// <summary>Set requires_grad on every parameter and return them all (tied weights once) as the trainable list.</summary>
    /// <param name="skipNonFloatingPoint">Leave out parameters stored as integers (a quantized base whose weights an
    /// optimizer strategy trains itself) instead of refusing them.</param>
    public static IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters(ICausalLanguageModel model, bool skipNonFloatingPoint = false)
    {
        var result = new List<(string, Parameter)>();
        var seen = new HashSet<IntPtr>();
        foreach (var (name, p) in model.NamedParameters())
        {
            if (!seen.Add(p.Handle)) continue;
            if (!p.is_floating_point())
            {
                if (skipNonFloatingPoint) continue;
                throw new InvalidOperationException($"parameter '{name}' is stored as {p.dtype} and cannot be trained in full fine-tuning (a quantized model needs a PEFT method)");
            }
            p.requires_grad_(true);
            result.Add((name, p));
        }
        return result;
    }
}
