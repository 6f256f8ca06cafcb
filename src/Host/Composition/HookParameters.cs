using Peft.Abstractions.Model;
using Peft.Abstractions.Training;
using TorchSharp.Modules;

namespace Peft.Host.Composition;

/// <summary>
/// Adds the parameters hooks declare (<see cref="ITrainingHook.DeclareTrainable"/>) to the method's trainable set:
/// the method's list first, in its order and under its names, then each declared parameter not in it yet (the same
/// tensor is never listed twice, whatever its name). LISA + LoRA: the adapters plus every decoder layer's weights.
/// </summary>
public static class HookParameters
{
    public static IReadOnlyList<(string Name, Parameter Parameter)> Union(IPeftModel model, IReadOnlyList<(string Name, Parameter Parameter)> methodTrainable,
        IReadOnlyList<(string Name, Parameter Parameter)> adapterParameters, IEnumerable<ITrainingHook> hooks)
    {
        var result = methodTrainable.ToList();
        var handles = new HashSet<IntPtr>(result.Select(p => p.Parameter.Handle));
        var names = new HashSet<string>(result.Select(p => p.Name), StringComparer.Ordinal);
        foreach (var hook in hooks)
            foreach (var (name, p) in hook.DeclareTrainable(model, adapterParameters))
            {
                if (handles.Contains(p.Handle)) continue;
                if (!names.Add(name)) throw new InvalidOperationException($"hook {hook.GetType().Name} declares '{name}', a name the trainable set already uses for another tensor");
                handles.Add(p.Handle);
                result.Add((name, p));
            }
        return result;
    }
}
