using System.Text.Json;
using Peft.Host.Formats;
using Peft.Host.Tokenization;

namespace Peft.Host.Data;

/// <summary>
/// Instruction tuning rows, one JSON object per line: <c>{"instruction": "...", "input": "...", "output": "..."}</c>
/// (<c>input</c> may be missing or empty). Each row becomes
/// <code>
///   input_ids = [BOS] + tok(prompt) + tok(output) + [EOS]        prompt = Alpaca template (with / without input)
///   labels    = [-100] * (1 + |tok(prompt)|) + tok(output) + [EOS]
/// </code>
/// truncated to seq_len (the tail is cut; a row with no response token left is dropped and counted). The prompt
/// and the response are tokenized separately (as torchtune does for messages), so the label mask falls exactly
/// on the boundary whatever the tokenizer does with the text where they meet.
/// </summary>
public static class InstructionDataset
{
    public sealed record LoadResult(IReadOnlyList<TokenizedExample> Examples, int Rows, int DroppedRows);

    /// <summary>
    /// Read and tokenize <paramref name="path"/>. Blank lines are skipped; a line that is not a JSON object, or
    /// lacks a string <c>instruction</c> or <c>output</c>, throws <see cref="PeftFormatException"/> naming the file
    /// and the 1-based line number.
    /// </summary>
    public static LoadResult Load(string path, ITextTokenizer tokenizer, int seqLen, int? maxRows = null)
    {
        var examples = new List<TokenizedExample>();
        int rows = 0, dropped = 0, lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            if (maxRows is { } max && rows >= max) break;
            var (instruction, input, output) = ParseRow(path, lineNumber, line);
            rows++;
            var example = Tokenize(instruction, input, output, tokenizer, seqLen);
            if (example.CountedTokens == 0) { dropped++; continue; }
            examples.Add(example);
        }
        if (rows == 0) throw new PeftFormatException($"{path}: no instruction rows (expected one JSON object per line with \"instruction\" and \"output\")");
        if (examples.Count == 0)
            throw new PeftFormatException($"{path}: every one of the {rows} rows was dropped: its prompt fills data:seq_len={seqLen} and leaves no response token to train on");
        return new LoadResult(examples, rows, dropped);
    }

    /// <summary>Tokenize one row with the Alpaca prompt; labels mask BOS and the prompt with -100.</summary>
    public static TokenizedExample Tokenize(string instruction, string? input, string output, ITextTokenizer tokenizer, int seqLen)
    {
        var prompt = tokenizer.Encode(AlpacaPromptTemplate.Format(instruction, input));
        var response = tokenizer.Encode(output);
        int bos = tokenizer.PrependsBos ? 1 : 0;   // no BOS for tokenizers without one (Qwen2.5)
        int full = bos + prompt.Count + response.Count + 1;
        int length = Math.Min(full, seqLen);
        var ids = new int[length];
        var labels = new int[length];
        int i = 0;
        void Put(int id, bool counted)
        {
            if (i >= length) return;
            ids[i] = id;
            labels[i] = counted ? id : TokenizedExample.IgnoreIndex;
            i++;
        }
        if (bos == 1) Put(tokenizer.BosId, false);
        foreach (var t in prompt) Put(t, false);
        foreach (var t in response) Put(t, true);
        Put(tokenizer.EosId, true);
        return new TokenizedExample(ids, labels);
    }

    static (string Instruction, string? Input, string Output) ParseRow(string path, int lineNumber, string line)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(line); }
        catch (JsonException e) { throw new PeftFormatException($"{path}:{lineNumber}: not valid JSON ({e.Message})"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new PeftFormatException($"{path}:{lineNumber}: expected a JSON object with \"instruction\", \"input\", \"output\", found a {root.ValueKind.ToString().ToLowerInvariant()}");
            string instruction = RequiredString(path, lineNumber, root, "instruction");
            string output = RequiredString(path, lineNumber, root, "output");
            string? input = null;
            if (root.TryGetProperty("input", out var inputElement) && inputElement.ValueKind != JsonValueKind.Null)
            {
                if (inputElement.ValueKind != JsonValueKind.String)
                    throw new PeftFormatException($"{path}:{lineNumber}: field \"input\" must be a string, found a {inputElement.ValueKind.ToString().ToLowerInvariant()}");
                input = inputElement.GetString();
            }
            return (instruction, input, output);
        }
    }

    static string RequiredString(string path, int lineNumber, JsonElement root, string field)
    {
        if (!root.TryGetProperty(field, out var e) || e.ValueKind == JsonValueKind.Null)
            throw new PeftFormatException($"{path}:{lineNumber}: missing field \"{field}\"");
        if (e.ValueKind != JsonValueKind.String)
            throw new PeftFormatException($"{path}:{lineNumber}: field \"{field}\" must be a string, found a {e.ValueKind.ToString().ToLowerInvariant()}");
        return e.GetString()!;
    }
}
