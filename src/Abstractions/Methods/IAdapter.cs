using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Abstractions.Methods;

/// <summary>One named adapter attached to a model by an <see cref="IPeftMethod"/>.</summary>
public interface IAdapter
{
    string Name { get; }
    string MethodName { get; }

    /// <summary>HF names of the module slots this adapter wraps.</summary>
    IReadOnlyList<string> TargetModules { get; }

    /// <summary>Parameters this adapter trains, named as in <see cref="GetStateDict"/>.</summary>
    IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters { get; }

    /// <summary>
    /// The adapter's tensors keyed the way HF PEFT saves them, minus the <c>base_model.model.</c> prefix:
    /// <c>model.layers.0.self_attn.q_proj.lora_A.weight</c>. Values alias the live parameters (do not dispose).
    /// </summary>
    IReadOnlyDictionary<string, Tensor> GetStateDict();

    /// <summary>Copy tensors in; a key that matches nothing, a missing key or a wrong shape throws naming the key.</summary>
    void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors);

    /// <summary>The body of <c>adapter_config.json</c> (the host sorts keys and writes it).</summary>
    JsonObject ToAdapterConfig();

    /// <summary>When false the model computes as if the adapter were absent.</summary>
    bool Enabled { get; set; }

    bool Merged { get; }

    /// <summary>Fold the adapter into the base weights. With <paramref name="safe"/>, refuse (throw) if any result is not finite.</summary>
    void Merge(bool safe = true);

    /// <summary>Undo <see cref="Merge"/>.</summary>
    void Unmerge();

    /// <summary>Remove the adapter from the model, restoring the layers it wrapped (unmerged).</summary>
    void Remove();

    /// <summary>
    /// Fold the adapter into the base weights for good and take its layers out of the model (HF PEFT's
    /// <c>merge_and_unload</c>): afterwards the slots hold plain base layers carrying the merged weights.
    /// </summary>
    void MergeAndUnload(bool safe = true);
}
