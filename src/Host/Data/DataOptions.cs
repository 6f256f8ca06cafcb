using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Host.Data;

/// <summary>
/// The <c>data</c> section: what to train on.
/// <code>
/// "data": { "path": "alpaca.jsonl", "format": "auto", "seq_len": 512, "validation_fraction": 0.05, "shuffle": true }
/// </code>
/// </summary>
public sealed class DataOptions : IValidatableOptions
{
    public static readonly IReadOnlyList<string> Formats = ["auto", "instruction", "text", "chat"];

    /// <summary>Training data: a <c>.jsonl</c> file of instruction rows or a <c>.txt</c> file of plain text. Required.</summary>
    [ConfigurationKeyName("path")]
    public string? Path { get; set; }

    /// <summary>"instruction" (JSONL rows instruction/input/output, Alpaca template), "text" (plain text, packed), or "auto" (by extension).</summary>
    [ConfigurationKeyName("format")]
    public string Format { get; set; } = "auto";

    /// <summary>Tokens per training sequence (instruction rows are truncated to it, text is packed into it).</summary>
    /// <summary>
    /// For format "chat": the chat template, "auto" (recognised from the model's tokenizer_config.json) or a name: llama3,
    /// chatml, or plain ("{Role}: {content}" + the tokenizer's EOS id; for tokenizers without a chat template, e.g. stories260K).
    /// </summary>
    [ConfigurationKeyName("chat_template")]
    public string ChatTemplate { get; set; } = "auto";

    [ConfigurationKeyName("seq_len")]
    public int SeqLen { get; set; } = 512;

    /// <summary>Share of the examples held out for evaluation, chosen deterministically from the training seed (0 = none).</summary>
    [ConfigurationKeyName("validation_fraction")]
    public double ValidationFraction { get; set; }

    /// <summary>A separate file (same format) for evaluation; exclusive with <see cref="ValidationFraction"/>.</summary>
    [ConfigurationKeyName("validation_path")]
    public string? ValidationPath { get; set; }

    /// <summary>Read only the first N rows (JSONL lines) or documents (text) of each file; unset = all.</summary>
    [ConfigurationKeyName("max_rows")]
    public int? MaxRows { get; set; }

    /// <summary>Visit the training examples in a new seeded order every epoch (false: file order).</summary>
    [ConfigurationKeyName("shuffle")]
    public bool Shuffle { get; set; } = true;

    /// <summary>The format to use for <paramref name="path"/>: the configured one, or the one its extension implies.</summary>
    public string ResolveFormat(string path)
    {
        if (Format != "auto") return Format;
        var ext = System.IO.Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".jsonl" or ".json" => "instruction",
            ".txt" or ".text" => "text",
            _ => throw new Abstractions.PeftConfigurationException("data:format", Format,
                $"cannot tell the format of '{path}' from its extension '{ext}' (use .jsonl or .txt, or set data:format to instruction or text)"),
        };
    }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (string.IsNullOrWhiteSpace(Path)) yield return ("path", Path, "is required: a .jsonl file of instruction rows or a .txt file of plain text");
        if (!Formats.Contains(Format)) yield return ("format", Format, $"must be one of {string.Join(", ", Formats)}");
        if (SeqLen < 2) yield return ("seq_len", SeqLen, "must be at least 2 (a token and the one after it)");
        if (!(ValidationFraction >= 0 && ValidationFraction < 1)) yield return ("validation_fraction", ValidationFraction, "must be in [0, 1)");
        if (ValidationPath is not null && string.IsNullOrWhiteSpace(ValidationPath)) yield return ("validation_path", ValidationPath, "must name a file");
        if (ValidationPath is not null && ValidationFraction > 0)
            yield return ("validation_fraction", ValidationFraction, "cannot be combined with data:validation_path (choose a held-out fraction or a separate file)");
        if (MaxRows is <= 0) yield return ("max_rows", MaxRows, "must be a positive number of rows");
    }
}
