using System.Text.RegularExpressions;
using Peft.Host.Formats;
using Peft.Host.Tokenization;

namespace Peft.Host.Data;

/// <summary>
/// Plain text for continued pre-training: documents are separated by blank lines; each becomes
/// <c>[BOS] + tok(document) + [EOS]</c>; all of them are concatenated and cut into consecutive sequences of
/// seq_len tokens (packing, as HF's <c>group_texts</c>). Every token is a label. The last, shorter piece is
/// kept as its own sequence when it has at least two tokens (it is padded in its batch) rather than dropped.
/// </summary>
public static partial class PlainTextDataset
{
    public sealed record LoadResult(IReadOnlyList<TokenizedExample> Examples, int Documents, long Tokens);

    public static LoadResult Load(string path, ITextTokenizer tokenizer, int seqLen, int? maxDocuments = null)
    {
        var documents = SplitDocuments(File.ReadAllText(path));
        if (maxDocuments is { } max) documents = documents.Take(max).ToList();
        if (documents.Count == 0) throw new PeftFormatException($"{path}: no text (plain-text data is documents separated by blank lines)");
        var stream = new List<int>();
        foreach (var document in documents)
        {
            if (tokenizer.PrependsBos) stream.Add(tokenizer.BosId);   // Qwen2.5 has none: documents are separated by EOS only
            stream.AddRange(tokenizer.Encode(document));
            stream.Add(tokenizer.EosId);
        }
        var examples = Pack(stream, seqLen);
        return new LoadResult(examples, documents.Count, stream.Count);
    }

    /// <summary>Documents of a text: runs of lines separated by one or more blank (whitespace-only) lines, trimmed.</summary>
    public static List<string> SplitDocuments(string text) =>
        BlankLines().Split(text.Replace("\r\n", "\n"))
            .Select(d => d.Trim())
            .Where(d => d.Length > 0)
            .ToList();

    /// <summary>Cut a token stream into seq_len pieces; a final piece of at least 2 tokens is kept.</summary>
    public static List<TokenizedExample> Pack(IReadOnlyList<int> stream, int seqLen)
    {
        var examples = new List<TokenizedExample>();
        for (int start = 0; start < stream.Count; start += seqLen)
        {
            int length = Math.Min(seqLen, stream.Count - start);
            if (length < 2) break;
            var ids = new int[length];
            for (int i = 0; i < length; i++) ids[i] = stream[start + i];
            examples.Add(new TokenizedExample(ids, (int[])ids.Clone()));
        }
        return examples;
    }

    [GeneratedRegex(@"\n[ \t]*\n(?:[ \t]*\n)*")]
    private static partial Regex BlankLines();
}
