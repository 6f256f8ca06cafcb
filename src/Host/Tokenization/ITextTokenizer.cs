namespace Peft.Host.Tokenization;

/// <summary>Text to token ids and back. The SentencePiece implementation reads <c>tokenizer.model</c>.</summary>
public interface ITextTokenizer
{
    int VocabSize { get; }
    int BosId { get; }
    int EosId { get; }

    /// <summary>
    /// Whether a sequence starts with <see cref="BosId"/> (transformers' <c>add_special_tokens=True</c>): true for
    /// Llama/SentencePiece; false for tokenizers without a BOS token (Qwen2.5: <c>bos_token</c> null,
    /// <c>add_bos_token</c> false), where documents, prompts and examples start with their first real token.
    /// </summary>
    bool PrependsBos => true;

    /// <summary>Token ids of <paramref name="text"/>, without BOS/EOS unless asked.</summary>
    IReadOnlyList<int> Encode(string text, bool addBos = false, bool addEos = false);

    string Decode(IEnumerable<int> ids);
}
