using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Peft.Abstractions.Model;

namespace Peft.Abstractions.Methods;

/// <summary>
/// One named adapter attached to a model by an <see cref="IPeftMethod"/>.
/// <para>
/// <b>Parameter naming</b> (one scheme for every method). Each adapter tensor has two names:
/// </para>
/// <list type="number">
/// <item><b>Parameter name</b>: the tensor's path in the live model, exactly as <see cref="IPeftModel.NamedParameters"/>
/// reports it: the slot's HF module name, the adapter module's attribute, the adapter name, the tensor:
/// <c>model.layers.0.self_attn.q_proj.lora_A.default.weight</c>, <c>...q_proj.lora_magnitude_vector.default.weight</c>.
/// <see cref="TrainableParameters"/> uses these names, so they are unique across several adapters on one model,
/// and the trainer, hooks, optimizers and checkpoints see one name per tensor.</item>
/// <item><b>File key</b>: the key HF PEFT writes to <c>adapter_model.safetensors</c>, minus the
/// <c>base_model.model.</c> prefix: the parameter name without the adapter name
/// (<c>model.layers.0.self_attn.q_proj.lora_A.weight</c>), and PEFT's own spelling where PEFT has one (a DoRA
/// magnitude is <c>...q_proj.lora_magnitude_vector</c>). <see cref="GetStateDict"/> and <see cref="LoadStateDict"/>
/// use these keys.</item>
/// </list>
/// </summary>
public interface IAdapter
{
    string Name { get; }
    string MethodName { get; }

    /// <summary>HF names of the module slots this adapter wraps.</summary>
    IReadOnlyList<string> TargetModules { get; }

    /// <summary>Parameters this adapter trains, under their parameter names (as <see cref="IPeftModel.NamedParameters"/> names them).</summary>
    IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters { get; }

    /// <summary>
    /// The adapter's tensors under their file keys (HF PEFT's keys minus the <c>base_model.model.</c> prefix:
    /// <c>model.layers.0.self_attn.q_proj.lora_A.weight</c>). Values alias the live parameters (do not dispose).
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
