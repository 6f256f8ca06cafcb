using System.Text.Json;
using Peft.Host.Formats;
using Peft.Host.Tokenization;

namespace Peft.Host.Data;

/// <summary>
/// Conversations, one JSON object per line: <c>{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}</c>,
/// formatted with a <see cref="ChatTemplate"/>. The loss is on the assistant messages only (their content and
/// end-of-turn token); labels are −100 elsewhere. A conversation longer than seq_len is cut at the end; one left
/// with no assistant token is dropped and counted.
/// </summary>
public static class ChatDataset
{
    public sealed record LoadResult(IReadOnlyList<TokenizedExample> Examples, int Rows, int DroppedRows);

    public static LoadResult Load(string path, ITextTokenizer tokenizer, ChatTemplate template, int seqLen, int? maxRows = null)
    {
        var examples = new List<TokenizedExample>();
        int rows = 0, dropped = 0, lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            if (maxRows is { } max && rows >= max) break;
            var messages = ParseRow(path, lineNumber, line);
            rows++;
            var full = template.Encode(messages, tokenizer);
            var example = full.Length <= seqLen ? full : new TokenizedExample(full.InputIds[..seqLen], full.Labels[..seqLen]);
            if (example.CountedTokens == 0) { dropped++; continue; }
            examples.Add(example);
        }
        if (rows == 0) throw new PeftFormatException($"{path}: no conversations (expected one JSON object per line with a \"messages\" list)");
        if (examples.Count == 0)
            throw new PeftFormatException($"{path}: none of the {rows} conversations has an assistant token within data:seq_len={seqLen}");
        return new LoadResult(examples, rows, dropped);
    }

    public static IReadOnlyList<ChatMessage> ParseRow(string path, int lineNumber, string line)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(line); }
        catch (JsonException e) { throw new PeftFormatException($"{path}:{lineNumber}: not valid JSON ({e.Message})"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("messages", out var list) || list.ValueKind != JsonValueKind.Array)
                throw new PeftFormatException($"{path}:{lineNumber}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}");
            var messages = new List<ChatMessage>();
            int index = 0;
            foreach (var m in list.EnumerateArray())
            {
                if (m.ValueKind != JsonValueKind.Object
                    || !m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String
                    || !m.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new PeftFormatException($"{path}:{lineNumber}: message {index} needs string \"role\" and \"content\"");
                var r = role.GetString()!;
                if (r is not ("system" or "user" or "assistant" or "tool"))
                    throw new PeftFormatException($"{path}:{lineNumber}: message {index} has role '{r}' (expected system, user, assistant or tool)");
                messages.Add(new ChatMessage(r, content.GetString()!));
                index++;
            }
            if (messages.Count == 0) throw new PeftFormatException($"{path}:{lineNumber}: \"messages\" is empty");
            return messages;
        }
    }
}
