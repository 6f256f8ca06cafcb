using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Model;
using Peft.Host.Training;

namespace Peft.Host.Composition;

/// <summary>A PEFT method's result: an HF PEFT adapter folder (<c>adapter/</c>) that HF PEFT's <c>PeftModel.from_pretrained</c> loads.</summary>
public sealed class AdapterOutput(IAdapter adapter, string baseModelPath) : ITrainingOutput
{
    public const string Folder = "adapter";

    public void WriteFinal(string directory) => PeftAdapterFolder.Save(adapter, Path.Combine(directory, Folder), baseModelPath);

    /// <summary>Each checkpoint carries a loadable adapter too, so any step can be evaluated or merged.</summary>
    public void WriteCheckpoint(string directory) => WriteFinal(directory);
}

/// <summary>Full fine-tuning's result: a complete HF model folder (<c>model/</c>: config.json, model.safetensors, tokenizer.model) transformers can load.</summary>
/// <remarks><paramref name="tokenizerPath"/>: a file of the base model's folder; every tokenizer file of that folder is copied.</remarks>
public sealed class HfModelOutput(LlamaForCausalLM model, string tokenizerPath) : ITrainingOutput
{
    public const string Folder = "model";

    public void WriteFinal(string directory) =>
        HfModelFolder.Save(model, Path.Combine(directory, Folder),
                           tokenizerFiles: Tokenization.TokenizerFolder.FilesIn(Path.GetDirectoryName(Path.GetFullPath(tokenizerPath))!));
}
