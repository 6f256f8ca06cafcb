using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Peft.Host.Formats;
using MlTokenizers = Microsoft.ML.Tokenizers;

namespace Peft.Host.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> (the <c>tokenizers</c> library's format) with a byte-level BPE model — the
/// tokenizer of Llama 3.x, Qwen2.5, SmolLM2 — run by Microsoft.ML.Tokenizers' <see cref="MlTokenizers.BpeTokenizer"/>
/// (<c>ByteLevel = true</c>). What the file says and how it maps:
/// <list type="bullet">
/// <item><c>pre_tokenizer</c>: <c>Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]</c> (Llama 3, Qwen2)
///   or <c>ByteLevel(use_regex=true)</c> (GPT-2's regex) -> a <see cref="MlTokenizers.RegexPreTokenizer"/> with
///   that regex; every match is one word, the text between matches is one word too (Isolated).</item>
/// <item><c>added_tokens</c>: split out of the text before the regex and mapped to their ids (HF does the same for
///   every added token, special or not).</item>
/// <item><c>normalizer</c>: none, or <c>NFC</c> (Qwen2).</item>
/// <item><c>model.ignore_merges</c> (Llama 3): a word that is a vocabulary entry as a whole is that token, before
///   any merge is tried (HF's BPE; tiktoken's rule).</item>
/// <item>BOS rule: a <c>TemplateProcessing</c> post-processor whose <c>single</c> starts with a special token adds
///   that token; otherwise <c>tokenizer_config.json</c>'s <c>add_bos_token</c> decides; otherwise a BOS is added
///   when <c>bos_token</c> is set (Llama), not when it is null (Qwen2). See <see cref="PrependsBos"/>.</item>
/// </list>
/// Anything else in the file (a WordPiece/Unigram model, byte_fallback, another normalizer or pre-tokenizer) is
/// refused with a message naming it, rather than tokenized differently from transformers.
/// </summary>
public sealed class ByteLevelBpeTokenizer : ITextTokenizer
{
    public const string FileName = "tokenizer.json";
    public const string ConfigFileName = "tokenizer_config.json";

    /// <summary>GPT-2's pre-tokenizer regex, used by a ByteLevel pre-tokenizer with use_regex = true.</summary>
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly MlTokenizers.BpeTokenizer _inner;
    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<string, int> _added;
    readonly Dictionary<int, string> _addedById;
    readonly bool _ignoreMerges;

    ByteLevelBpeTokenizer(MlTokenizers.BpeTokenizer inner, Dictionary<string, int> vocab, Dictionary<string, int> added,
                          bool ignoreMerges, string path)
    {
        _inner = inner;
        _vocab = vocab;
        _added = added;
        _addedById = added.ToDictionary(kv => kv.Value, kv => kv.Key);
        _ignoreMerges = ignoreMerges;
        Path = path;
        VocabSize = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max(), added.Values.DefaultIfEmpty(-1).Max()) + 1;
    }

    public string Path { get; }
    public int VocabSize { get; }
    public int BosId { get; private set; }
    public int EosId { get; private set; }

    /// <summary>Whether a sequence starts with <see cref="BosId"/> (transformers' <c>add_special_tokens=True</c>).</summary>
    public bool PrependsBos { get; private set; }

    /// <summary>The BOS token's text (<c>&lt;|begin_of_text|&gt;</c>), or null when the tokenizer has none.</summary>
    public string? BosToken { get; private set; }
    public string? EosToken { get; private set; }

    /// <summary><c>tokenizer_config.json</c>'s <c>chat_template</c> (the default one when it lists several), or null.</summary>
    public string? ChatTemplate { get; private set; }

    /// <summary>The id of an added/special token given by its text (<c>&lt;|eot_id|&gt;</c>), or null.</summary>
    public int? AddedTokenId(string content) => _added.TryGetValue(content, out var id) ? id : null;

    /// <summary>
    /// Read <paramref name="path"/> (<c>tokenizer.json</c>) and, from the same folder, <c>tokenizer_config.json</c>
    /// when it exists. <paramref name="modelBosId"/>/<paramref name="modelEosIds"/> (config.json) are the fallback
    /// when the tokenizer files name no BOS/EOS.
    /// </summary>
    public static ByteLevelBpeTokenizer Load(string path, int? modelBosId = null, IReadOnlyList<int>? modelEosIds = null)
    {
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: tokenizer file not found");
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new JsonException("empty document"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new PeftFormatException($"{path}: not a JSON object ({e.Message})"); }

        var model = root["model"] as JsonObject ?? throw new PeftFormatException($"{path}: no \"model\" object");
        var type = model["type"]?.GetValue<string>() ?? (model["merges"] is not null ? "BPE" : null);
        if (type != "BPE") throw new PeftFormatException($"{path}: model type '{type}' is not supported (only byte-level \"BPE\")");
        if (model["byte_fallback"] is JsonValue bf && bf.GetValueKind() == JsonValueKind.True)
            throw new PeftFormatException($"{path}: model.byte_fallback = true (a SentencePiece-style BPE) is not supported; use the folder's tokenizer.model");
        foreach (var key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model[key] is JsonValue v && v.GetValueKind() == JsonValueKind.String && v.GetValue<string>().Length > 0)
                throw new PeftFormatException($"{path}: model.{key} = '{v.GetValue<string>()}' is not supported by a byte-level BPE");
        if (model["dropout"] is JsonValue d && d.GetValueKind() == JsonValueKind.Number && d.GetValue<double>() > 0)
            throw new PeftFormatException($"{path}: model.dropout = {d.ToJsonString()} is not supported (BPE dropout is a training-time regularizer)");

        string pattern = PreTokenizerPattern(path, root["pre_tokenizer"]);
        var normalizer = NormalizerOf(path, root["normalizer"]);
        if (root["decoder"] is JsonObject dec && dec["type"]?.GetValue<string>() is { } decType && decType != "ByteLevel")
            throw new PeftFormatException($"{path}: decoder type '{decType}' is not supported (only ByteLevel)");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        if (model["vocab"] is not JsonObject vocabNode) throw new PeftFormatException($"{path}: model.vocab is not an object");
        foreach (var (token, idNode) in vocabNode) vocab[token] = idNode!.GetValue<int>();
        var merges = new List<string>();
        if (model["merges"] is not JsonArray mergeNodes) throw new PeftFormatException($"{path}: model.merges is not a list");
        foreach (var m in mergeNodes)
            merges.Add(m switch
            {
                JsonValue v => v.GetValue<string>(),                                    // "Ġ t"
                JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}", // ["Ġ", "t"]
                _ => throw new PeftFormatException($"{path}: model.merges has an entry {m?.ToJsonString()} that is not a pair"),
            });

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root["added_tokens"] is JsonArray addedNodes)
            foreach (var a in addedNodes.OfType<JsonObject>())
                if (a["content"]?.GetValue<string>() is { } content && a["id"] is JsonValue idv)
                    added[content] = idv.GetValue<int>();

        var specials = added.Count > 0 ? added : null;
        var options = new MlTokenizers.BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = specials,
            PreTokenizer = new MlTokenizers.RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), specials),
            Normalizer = normalizer,
        };
        MlTokenizers.BpeTokenizer inner;
        try { inner = MlTokenizers.BpeTokenizer.Create(options); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        { throw new PeftFormatException($"{path}: not a valid BPE vocabulary ({e.Message})"); }

        bool ignoreMerges = model["ignore_merges"] is JsonValue im && im.GetValueKind() == JsonValueKind.True;
        var tokenizer = new ByteLevelBpeTokenizer(inner, vocab, added, ignoreMerges, path);
        tokenizer.ReadSpecialTokens(root, System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, ConfigFileName),
                                    modelBosId, modelEosIds);
        return tokenizer;
    }

    /// <summary>The split regex of the pre-tokenizer, or a refusal naming what is not supported.</summary>
    static string PreTokenizerPattern(string path, JsonNode? node)
    {
        if (node is not JsonObject pre) throw new PeftFormatException($"{path}: no pre_tokenizer (a byte-level BPE needs one)");
        var type = pre["type"]?.GetValue<string>();
        if (type == "ByteLevel")
        {
            if (pre["add_prefix_space"] is JsonValue aps && aps.GetValueKind() == JsonValueKind.True)
                throw new PeftFormatException($"{path}: pre_tokenizer ByteLevel with add_prefix_space = true is not supported");
            if (pre["use_regex"] is JsonValue ur && ur.GetValueKind() == JsonValueKind.False)
                throw new PeftFormatException($"{path}: pre_tokenizer ByteLevel with use_regex = false and no Split is not supported");
            return Gpt2Pattern;
        }
        if (type == "Sequence" && pre["pretokenizers"] is JsonArray seq && seq.Count == 2
            && seq[0] is JsonObject split && split["type"]?.GetValue<string>() == "Split"
            && seq[1] is JsonObject bl && bl["type"]?.GetValue<string>() == "ByteLevel")
        {
            if (split["pattern"]?["Regex"]?.GetValue<string>() is not { } regex)
                throw new PeftFormatException($"{path}: pre_tokenizer Split has no Regex pattern");
            var behavior = split["behavior"]?.GetValue<string>();
            if (behavior != "Isolated") throw new PeftFormatException($"{path}: pre_tokenizer Split behavior '{behavior}' is not supported (only Isolated)");
            if (split["invert"] is JsonValue inv && inv.GetValueKind() == JsonValueKind.True)
                throw new PeftFormatException($"{path}: pre_tokenizer Split with invert = true is not supported");
            if (bl["add_prefix_space"] is JsonValue aps && aps.GetValueKind() == JsonValueKind.True)
                throw new PeftFormatException($"{path}: pre_tokenizer ByteLevel with add_prefix_space = true is not supported");
            if (bl["use_regex"] is JsonValue ur && ur.GetValueKind() == JsonValueKind.True)
                throw new PeftFormatException($"{path}: pre_tokenizer ByteLevel with use_regex = true after a Split is not supported");
            try { _ = new Regex(regex); }
            catch (ArgumentException e) { throw new PeftFormatException($"{path}: pre_tokenizer regex '{regex}' is not valid here ({e.Message})"); }
            return regex;
        }
        throw new PeftFormatException($"{path}: pre_tokenizer {pre.ToJsonString()[..Math.Min(120, pre.ToJsonString().Length)]} is not supported " +
                                      "(expected ByteLevel, or Sequence[Split(Regex), ByteLevel])");
    }

    static MlTokenizers.Normalizer? NormalizerOf(string path, JsonNode? node)
    {
        if (node is null) return null;
        var type = node["type"]?.GetValue<string>();
        return type switch
        {
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
            _ => throw new PeftFormatException($"{path}: normalizer '{type}' is not supported (none or NFC)"),
        };
    }

    void ReadSpecialTokens(JsonObject root, string configPath, int? modelBosId, IReadOnlyList<int>? modelEosIds)
    {
        JsonObject config = new();
        if (File.Exists(configPath))
        {
            try { config = JsonNode.Parse(File.ReadAllText(configPath))?.AsObject() ?? new JsonObject(); }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            { throw new PeftFormatException($"{configPath}: not a JSON object ({e.Message})"); }
        }
        string? TokenText(string key) => config[key] switch
        {
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
            JsonObject o => o["content"]?.GetValue<string>(),         // an AddedToken object
            _ => null,
        };
        int? IdOf(string key, string? text)
        {
            if (text is null) return null;
            if (_added.TryGetValue(text, out var id) || _vocab.TryGetValue(text, out id)) return id;
            throw new PeftFormatException($"{configPath}: key '{key}' names the token '{text}', which is not in {Path}");
        }

        BosToken = TokenText("bos_token");
        EosToken = TokenText("eos_token");
        int? bos = IdOf("bos_token", BosToken) ?? modelBosId;
        int? eos = IdOf("eos_token", EosToken) ?? (modelEosIds is { Count: > 0 } m ? m[0] : null);
        BosToken ??= bos is int b && _addedById.TryGetValue(b, out var bt) ? bt : null;
        EosToken ??= eos is int eo && _addedById.TryGetValue(eo, out var et) ? et : null;

        // BOS rule: the post-processor's template, else add_bos_token, else "a BOS token exists".
        bool? templateBos = null;
        if (root["post_processor"] is JsonObject post)
        {
            var processors = post["type"]?.GetValue<string>() == "Sequence" && post["processors"] is JsonArray list
                ? list.OfType<JsonObject>() : [post];
            foreach (var p in processors.Where(p => p["type"]?.GetValue<string>() == "TemplateProcessing"))
            {
                var first = (p["single"] as JsonArray)?.FirstOrDefault();
                if (first?["SpecialToken"]?["id"]?.GetValue<string>() is { } special)
                {
                    templateBos = true;
                    bos = _added.TryGetValue(special, out var id) ? id : bos;
                    BosToken = special;
                }
                else templateBos = false;
            }
        }
        bool? configBos = config["add_bos_token"] is JsonValue ab && ab.GetValueKind() is JsonValueKind.True or JsonValueKind.False
            ? ab.GetValueKind() == JsonValueKind.True : null;
        PrependsBos = (templateBos ?? configBos ?? BosToken is not null) && bos is not null;

        // A tokenizer without BOS (Qwen2) still needs a start-of-document id for callers that always put one
        // first: the end-of-text token, which separates documents in such models' pre-training.
        BosId = bos ?? eos ?? throw new PeftFormatException($"{configPath}: no bos_token or eos_token, and config.json names neither");
        EosId = eos ?? bos!.Value;

        ChatTemplate = config["chat_template"] switch
        {
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
            JsonArray named => named.OfType<JsonObject>().FirstOrDefault(o => o["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
            _ => null,
        };
    }

    public IReadOnlyList<int> Encode(string text, bool addBos = false, bool addEos = false)
    {
        var ids = new List<int>();
        if (addBos) ids.Add(BosId);
        if (_ignoreMerges) EncodeIgnoringMerges(text, ids);
        else ids.AddRange(_inner.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true));
        if (addEos) ids.Add(EosId);
        return ids;
    }

    /// <summary>
    /// HF's BPE with <c>ignore_merges</c>: each pre-tokenized word that is itself a vocabulary entry (in the
    /// byte-level alphabet) becomes that one token; other words go through the merges.
    /// </summary>
    void EncodeIgnoringMerges(string text, List<int> ids)
    {
        var normalized = _inner.Normalizer?.Normalize(text) ?? text;
        foreach (var (offset, length) in _inner.PreTokenizer!.PreTokenize(normalized))
        {
            var word = normalized.AsSpan(offset, length);
            var key = word.ToString();
            if (_added.TryGetValue(key, out var special)) { ids.Add(special); continue; }
            if (_vocab.TryGetValue(ByteLevelAlphabet.Encode(key), out var whole)) { ids.Add(whole); continue; }
            ids.AddRange(_inner.EncodeToIds(key, considerPreTokenization: false, considerNormalization: false));
        }
    }

    public string Decode(IEnumerable<int> ids)
    {
        // Special tokens are dropped (skip_special_tokens), as the SentencePiece tokenizer drops BOS/EOS.
        return _inner.Decode(ids.Where(id => !_addedById.ContainsKey(id)), considerSpecialTokens: false);
    }

    /// <summary>Decode keeping special tokens as their text (<c>&lt;|eot_id|&gt;</c>).</summary>
    public string DecodeWithSpecialTokens(IEnumerable<int> ids) => _inner.Decode(ids, considerSpecialTokens: true);

    sealed class UnicodeNormalizer(NormalizationForm form) : MlTokenizers.Normalizer
    {
        public override string Normalize(string original) => original.Normalize(form);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(form);
    }
}

/// <summary>
/// GPT-2's byte-to-unicode table (HF <c>bytes_to_unicode</c>): printable bytes stand for themselves, the other 68
/// map to U+0100.. in order, so every byte string is a printable string (space -> 'Ġ', newline -> 'Ċ').
/// </summary>
public static class ByteLevelAlphabet
{
    static readonly char[] Table = Build();

    static char[] Build()
    {
        var table = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + next++);
        }
        return table;
    }

    /// <summary>The UTF-8 bytes of <paramref name="text"/>, each written as its byte-level character.</summary>
    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = Table[bytes[i]];
        return new string(chars);
    }
}
