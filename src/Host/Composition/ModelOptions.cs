using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Host.Composition;

/// <summary>
/// The <c>model</c> section: the base model's HF folder, and optionally a llama2.c checkpoint to import into
/// that folder first when it does not exist yet (so one command can go from the bundled stories260K to training).
/// </summary>
public sealed class ModelOptions : IValidatableOptions
{
    public const string Section = "model";

    /// <summary>HF model folder: config.json, model.safetensors (or shards + index), tokenizer.model.</summary>
    [ConfigurationKeyName("path")] public string? Path { get; set; }

    /// <summary>Import this llama2.c checkpoint into <see cref="Path"/> when the folder is missing.</summary>
    [ConfigurationKeyName("import_llama2c")] public Llama2cImportOptions? ImportLlama2c { get; set; }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (string.IsNullOrWhiteSpace(Path)) yield return ("path", Path, "is required: the HF model folder to fine-tune");
        if (ImportLlama2c is { } i)
        {
            if (string.IsNullOrWhiteSpace(i.Checkpoint)) yield return ("import_llama2c:checkpoint", i.Checkpoint, "is required (a llama2.c .bin file)");
            else if (!File.Exists(i.Checkpoint)) yield return ("import_llama2c:checkpoint", i.Checkpoint, "file not found");
            if (string.IsNullOrWhiteSpace(i.Tokenizer)) yield return ("import_llama2c:tokenizer", i.Tokenizer, "is required (a SentencePiece tokenizer.model)");
            else if (!File.Exists(i.Tokenizer)) yield return ("import_llama2c:tokenizer", i.Tokenizer, "file not found");
        }
        else if (!string.IsNullOrWhiteSpace(Path) && !Directory.Exists(Path))
            yield return ("path", Path, "folder not found (set model:import_llama2c to create it from a llama2.c checkpoint)");
    }

    public static ModelOptions From(IConfiguration root) => OptionsBinding.Bind<ModelOptions>(root.GetSection(Section));
}

public sealed class Llama2cImportOptions
{
    [ConfigurationKeyName("checkpoint")] public string? Checkpoint { get; set; }
    [ConfigurationKeyName("tokenizer")] public string? Tokenizer { get; set; }
}
