using Peft.Host.Formats;

namespace Peft.Host.Tokenization;

/// <summary>
/// The tokenizer of an HF model folder. Like transformers' fast tokenizers, a <c>tokenizer.json</c> is preferred
/// when the folder has both it and a SentencePiece <c>tokenizer.model</c>.
/// </summary>
public static class TokenizerFolder
{
    public const string SentencePieceFile = "tokenizer.model";

    /// <summary>The tokenizer files a model folder may carry, copied along when a model folder is written.</summary>
    public static readonly IReadOnlyList<string> FileNames =
        [ByteLevelBpeTokenizer.FileName, ByteLevelBpeTokenizer.ConfigFileName, "special_tokens_map.json", SentencePieceFile];

    /// <summary>
    /// Open the folder's tokenizer: <c>tokenizer.json</c> (with <c>tokenizer_config.json</c>) or else
    /// <c>tokenizer.model</c>. <paramref name="bosId"/>/<paramref name="eosIds"/> (config.json) are used when the
    /// tokenizer files name no BOS/EOS.
    /// </summary>
    public static ITextTokenizer Open(string dir, int? bosId = null, IReadOnlyList<int>? eosIds = null)
    {
        var json = Path.Combine(dir, ByteLevelBpeTokenizer.FileName);
        if (File.Exists(json)) return ByteLevelBpeTokenizer.Load(json, bosId, eosIds);
        var model = Path.Combine(dir, SentencePieceFile);
        if (File.Exists(model)) return SentencePieceTokenizer.Load(model);
        throw new PeftFormatException($"{dir}: no {ByteLevelBpeTokenizer.FileName} (HF tokenizers) and no {SentencePieceFile} (SentencePiece)");
    }

    /// <summary>The tokenizer files present in <paramref name="dir"/> (full paths), to copy into a model folder written from it.</summary>
    public static IReadOnlyList<string> FilesIn(string dir) =>
        FileNames.Select(f => Path.Combine(dir, f)).Where(File.Exists).ToList();
}
