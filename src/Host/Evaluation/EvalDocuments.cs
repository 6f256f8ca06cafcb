using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Formats;

namespace Peft.Host.Evaluation;

/// <summary>
/// Reads the documents of an evaluation file.
/// <list type="bullet">
/// <item><c>.txt</c>: documents separated by one or more blank lines (a line holding only whitespace is blank);
/// each document keeps its inner newlines and is trimmed of leading/trailing whitespace. A file that contains the
/// separator <c>&lt;|endoftext|&gt;</c> (TinyStories, GPT-2 style dumps) is split on it instead, and blank lines stay
/// inside documents; the separator itself is never scored as text.</item>
/// <item><c>.jsonl</c>: one JSON object per line with a string field <c>text</c>; blank lines are skipped;
/// a line that is not such an object is an error naming the file and the line number.</item>
/// </list>
/// </summary>
public static class EvalDocuments
{
    public static IReadOnlyList<string> Read(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: data file not found");
        var docs = Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".txt" => ParseText(File.ReadAllText(path)),
            ".jsonl" => ParseJsonl(path, File.ReadAllLines(path)),
            var ext => throw new PeftFormatException($"{path}: unsupported data file extension '{ext}' (expected .txt or .jsonl)"),
        };
        if (docs.Count == 0) throw new PeftFormatException($"{path}: no documents (the file is empty or only whitespace)");
        return docs;
    }

    /// <summary>The document separator of TinyStories and GPT-2 style text dumps.</summary>
    public const string EndOfText = "<|endoftext|>";

    public static List<string> ParseText(string text)
    {
        if (text.Contains(EndOfText, StringComparison.Ordinal))
            return text.ReplaceLineEndings("\n").Split(EndOfText).Select(d => d.Trim()).Where(d => d.Length > 0).ToList();
        var docs = new List<string>();
        var current = new List<string>();
        foreach (var line in text.ReplaceLineEndings("\n").Split('\n'))
        {
            if (string.IsNullOrWhiteSpace(line))
            {
                Flush();
                continue;
            }
            current.Add(line);
        }
        Flush();
        return docs;

        void Flush()
        {
            if (current.Count == 0) return;
            docs.Add(string.Join("\n", current).Trim());
            current.Clear();
        }
    }

    /// <summary>
    /// Whether a <c>.jsonl</c> file holds instruction rows (its first object has an <c>instruction</c> field), the
    /// format <c>train</c> reads with <c>data:format = instruction</c>.
    /// </summary>
    public static bool IsInstructionFile(string path)
    {
        if (!Path.GetExtension(path).Equals(".jsonl", StringComparison.OrdinalIgnoreCase)) return false;
        var first = File.ReadLines(path).FirstOrDefault(l => !string.IsNullOrWhiteSpace(l));
        if (first is null) return false;
        try { return JsonNode.Parse(first) is JsonObject o && o.ContainsKey("instruction"); }
        catch (JsonException) { return false; }
    }

    static List<string> ParseJsonl(string path, string[] lines)
    {
        var docs = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            string where = $"{path}: line {i + 1}";
            JsonNode? node;
            try { node = JsonNode.Parse(lines[i]); }
            catch (JsonException e) { throw new PeftFormatException($"{where}: not valid JSON ({e.Message})"); }
            if (node is not JsonObject o) throw new PeftFormatException($"{where}: expected a JSON object with a \"text\" field");
            if (o["text"] is not JsonValue v || v.GetValueKind() != JsonValueKind.String)
                throw new PeftFormatException($"{where}: expected a string field \"text\"");
            var text = v.GetValue<string>();
            if (text.Length == 0) throw new PeftFormatException($"{where}: \"text\" is empty");
            docs.Add(text);
        }
        return docs;
    }
}
