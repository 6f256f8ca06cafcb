using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Model;
using Peft.Host.Training;

namespace Peft.Host.Composition;

/// <summary>
/// The result of a PEFT method when it must (or is asked to) include base weights: a hook trained some of them
/// (LISA + LoRA: the sampled layers' own weights) or <c>output:merge_adapter</c> is set.
/// <list type="bullet">
/// <item>merged: one HF model folder <c>model/</c> whose weights are the trained base plus the adapter folded in
/// (each slot written as its effective dense weight), loadable by transformers or <c>peft eval --model</c>;</item>
/// <item>not merged: <c>model/</c> holds the trained base (adapter disabled while it is written) and <c>adapter/</c> the
/// HF PEFT adapter whose <c>base_model_name_or_path</c> is that folder (<c>peft eval --model out/model --adapter out/adapter</c>).</item>
/// </list>
/// Checkpoints add nothing: the trainer's <c>trainable.safetensors</c> holds every trained tensor, base weights included.
/// </summary>
public sealed class TrainedBaseOutput(LlamaForCausalLM model, IAdapter adapter, string tokenizerPath, bool merge) : ITrainingOutput
{
    public void WriteFinal(string directory)
    {
        var modelDir = Path.Combine(directory, HfModelOutput.Folder);
        if (merge)
        {
            HfModelFolder.Save(model, modelDir, tokenizerPath);
            return;
        }
        bool enabled = adapter.Enabled;
        adapter.Enabled = false;
        try { HfModelFolder.Save(model, modelDir, tokenizerPath); }
        finally { adapter.Enabled = enabled; }
        PeftAdapterFolder.Save(adapter, Path.Combine(directory, AdapterOutput.Folder), Path.GetFullPath(modelDir));
    }

    /// <summary>
    /// The output of a composed run: full fine-tuning → <see cref="HfModelOutput"/>; a method whose base stayed frozen
    /// → <see cref="AdapterOutput"/> (or the merged folder with <paramref name="merge"/>); a method whose base weights a
    /// hook trained → <see cref="TrainedBaseOutput"/>. Returns the output and the folders it writes, for the user.
    /// </summary>
    public static (ITrainingOutput Output, string Describe) For(ComposedRun composed, LlamaForCausalLM model, string modelDir, bool merge)
    {
        var tokenizer = Path.Combine(modelDir, HfModelFolder.TokenizerFile);
        if (composed.Adapter is not { } adapter) return (new HfModelOutput(model, tokenizer), $"model: {HfModelOutput.Folder}/");
        bool baseTrained = composed.TrainableParameters.Count > adapter.TrainableParameters.Count;
        if (!baseTrained && !merge) return (new AdapterOutput(adapter, Path.GetFullPath(modelDir)), $"adapter: {AdapterOutput.Folder}/");
        return (new TrainedBaseOutput(model, adapter, tokenizer, merge),
            merge ? $"model (adapter merged): {HfModelOutput.Folder}/" : $"model (trained base): {HfModelOutput.Folder}/, adapter: {AdapterOutput.Folder}/");
    }
}
