using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Abstractions.Training;
using Peft.Host.Formats;

namespace Peft.Host.Training;

/// <summary>
/// The hooks' checkpoint channel (<see cref="ITrainingHook.SaveState"/> / <see cref="ITrainingHook.LoadState"/>):
/// <c>trainer_state.json</c> holds <c>"hooks": [ { "hook": type name, "state": {...} }, ... ]</c>, one entry per hook
/// that has state, in the run's order (the order of the configuration's <c>hooks</c> list). Hooks without state
/// (SaveState returns null) are not recorded and may come and go between a run and its resume; the stateful ones
/// must be the same, in the same order. The training summary carries the same array at the end of a run.
/// </summary>
public static class HookStates
{
    /// <summary>The stateful hooks' states, in order; null when none has state.</summary>
    public static JsonArray? Save(IReadOnlyList<ITrainingHook> hooks)
    {
        var array = new JsonArray();
        foreach (var hook in hooks)
            if (hook.SaveState() is { } state)
                array.Add(new JsonObject { ["hook"] = hook.GetType().Name, ["state"] = state.DeepClone() });
        return array.Count == 0 ? null : array;
    }

    /// <summary>Hand each stateful hook its saved state. The checkpoint must have been made with the same stateful hooks, in the same order.</summary>
    public static void Load(IReadOnlyList<ITrainingHook> hooks, JsonArray? saved, string stateFile)
    {
        var stateful = hooks.Where(h => h.SaveState() is not null).ToList();
        var runNames = stateful.Select(h => h.GetType().Name).ToList();
        var savedNames = (saved ?? []).Select(e => e?["hook"]?.GetValue<string>()).ToList();
        if (!savedNames.SequenceEqual(runNames))
            throw new PeftConfigurationException("hooks", runNames.Count == 0 ? "none" : string.Join(", ", runNames),
                $"differ from the hooks of the checkpoint ({(savedNames.Count == 0 ? "none" : string.Join(", ", savedNames))}, {stateFile}); a resumed run must keep them");
        for (int i = 0; i < stateful.Count; i++)
        {
            if (saved![i]?["state"] is not JsonObject state) throw new PeftFormatException($"{stateFile}: hook {runNames[i]} has no state object");
            try { stateful[i].LoadState((JsonObject)state.DeepClone()); }
            catch (Exception e) when (e is FormatException or InvalidOperationException or ArgumentException or KeyNotFoundException or NullReferenceException)
            { throw new PeftFormatException($"{stateFile}: the state of hook {runNames[i]} cannot be restored ({e.Message})"); }
        }
    }
}
