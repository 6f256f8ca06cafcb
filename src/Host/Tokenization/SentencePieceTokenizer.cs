using Peft.Host.Formats;
using MlTokenizers = Microsoft.ML.Tokenizers;

namespace Peft.Host.Tokenization;

/// <summary>
/// A SentencePiece (BPE, byte-fallback) tokenizer read from a <c>tokenizer.model</c>, through
/// Microsoft.ML.Tokenizers' LlamaTokenizer. Encoding applies the model's normalizer, i.e. the "▁" whitespace
/// escape and the dummy prefix (so "Once" becomes "▁Once", as llama2.c and HF's slow Llama tokenizer encode it);
/// characters outside the vocabulary fall back to their UTF-8 bytes (&lt;0xNN&gt; pieces).
/// Decoding turns "▁" back into spaces, joins byte pieces into UTF-8 and drops the leading space the dummy
/// prefix added, which is how llama2.c prints text that follows BOS.
/// </summary>
public sealed class SentencePieceTokenizer : ITextTokenizer
{
    readonly MlTokenizers.SentencePieceTokenizer _inner;

    SentencePieceTokenizer(MlTokenizers.SentencePieceTokenizer inner, string path)
    {
        _inner = inner;
        Path = path;
        VocabSize = inner.Vocabulary.Count;
        BosId = inner.BeginningOfSentenceId;
        EosId = inner.EndOfSentenceId;
    }

    public string Path { get; }
    public int VocabSize { get; }
    public int BosId { get; }
    public int EosId { get; }

    public static SentencePieceTokenizer Load(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: tokenizer file not found");
        try
        {
            using var stream = File.OpenRead(path);
            var inner = MlTokenizers.LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
            return new SentencePieceTokenizer(inner, path);
        }
        catch (Exception e) when (e is not PeftFormatException and not OutOfMemoryException)
        {
            throw new PeftFormatException($"{path}: not a SentencePiece BPE model ({e.Message})");
        }
    }

    public IReadOnlyList<int> Encode(string text, bool addBos = false, bool addEos = false) =>
        _inner.EncodeToIds(text, addBos, addEos, considerPreTokenization: true, considerNormalization: true);

    public string Decode(IEnumerable<int> ids) => _inner.Decode(ids, considerSpecialTokens: false);
}
