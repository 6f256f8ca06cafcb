namespace Peft.Host.Tokenization;

/// <summary>Text to token ids and back. The SentencePiece implementation reads <c>tokenizer.model</c>.</summary>
public interface ITextTokenizer
{
    int VocabSize { get; }
    int BosId { get; }
    int EosId { get; }

    /// <summary>Token ids of <paramref name="text"/>, without BOS/EOS unless asked.</summary>
    IReadOnlyList<int> Encode(string text, bool addBos = false, bool addEos = false);

    string Decode(IEnumerable<int> ids);
}
