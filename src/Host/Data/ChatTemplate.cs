using Peft.Abstractions;
using Peft.Host.Tokenization;

namespace Peft.Host.Data;

/// <summary>One turn of a conversation: role (system, user, assistant...) and its text.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// A chat template of a known model family, rendered in code (there is no Jinja engine for .NET): the pieces of
/// text around each message, with the family's special tokens. The model's own <c>chat_template</c>
/// (tokenizer_config.json) is recognised by its special tokens; an unknown one is refused, and a user can name
/// the family instead (<c>data:chat_template</c>, <c>generate --chat-template</c>).
/// <code>
///   llama3   [&lt;|begin_of_text|&gt;] &lt;|start_header_id|&gt;{role}&lt;|end_header_id|&gt;\n\n{content.strip()}&lt;|eot_id|&gt; ...
///            generation prompt: &lt;|start_header_id|&gt;assistant&lt;|end_header_id|&gt;\n\n
///   chatml   &lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n ...           (Qwen2/2.5, SmolLM2)
///            generation prompt: &lt;|im_start|&gt;assistant\n
///   plain    [BOS] {Role}: {content}[EOS] ...                               (any tokenizer: no special-token text)
///            generation prompt: Assistant:
/// </code>
/// The end-of-turn token (&lt;|eot_id|&gt;, &lt;|im_end|&gt;; the tokenizer's EOS id for <c>plain</c>) closes every
/// message; it is what generation stops at. <c>plain</c> is for models whose tokenizer has no chat template and no
/// chat special tokens (a SentencePiece <c>tokenizer.model</c> such as stories260K's): it is only ever chosen by name.
/// </summary>
public sealed class ChatTemplate
{
    public const string Llama3 = "llama3", ChatMl = "chatml", Plain = "plain";
    public static readonly IReadOnlyList<string> Names = [Llama3, ChatMl, Plain];

    /// <summary>Qwen2.5's template puts this system message first when the conversation has none.</summary>
    const string QwenDefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

    ChatTemplate(string name, string? bosText, Func<string, string> header, string? endOfTurn, string afterTurn, bool trimContent, string? defaultSystem)
    {
        Name = name;
        BosText = bosText;
        Header = header;
        EndOfTurn = endOfTurn;
        AfterTurn = afterTurn;
        TrimContent = trimContent;
        DefaultSystem = defaultSystem;
    }

    public string Name { get; }
    /// <summary>Text put once before the first message (the BOS token of Llama 3), or null.</summary>
    public string? BosText { get; }
    /// <summary>The text that opens a message of a role (<c>&lt;|im_start|&gt;user\n</c>).</summary>
    public Func<string, string> Header { get; }
    /// <summary>The special token that closes a message; null: the tokenizer's EOS id (<c>plain</c>).</summary>
    public string? EndOfTurn { get; }
    /// <summary>Put the tokenizer's BOS id first (when it adds one): <c>plain</c>, whose text has no BOS token.</summary>
    bool BosFromTokenizer => Name == Plain;
    /// <summary>Text after the end-of-turn token (ChatML's newline).</summary>
    public string AfterTurn { get; }
    public bool TrimContent { get; }
    public string? DefaultSystem { get; }

    /// <summary>The text that asks the model for the assistant's turn.</summary>
    public string GenerationPrompt => Header("assistant");

    public static ChatTemplate ByName(string name, string? modelTemplate = null) => name switch
    {
        Llama3 => new(Llama3, "<|begin_of_text|>", role => $"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>", "", trimContent: true, null),
        ChatMl => new(ChatMl, null, role => $"<|im_start|>{role}\n", "<|im_end|>", "\n", trimContent: false,
                      modelTemplate?.Contains(QwenDefaultSystem, StringComparison.Ordinal) == true ? QwenDefaultSystem : null),
        Plain => new(Plain, null, role => $"{char.ToUpperInvariant(role[0])}{role[1..]}:", null, "", trimContent: true, null),
        _ => throw new ArgumentException($"unknown chat template '{name}' (known: {string.Join(", ", Names)})"),
    };

    /// <summary>
    /// The template for <paramref name="tokenizer"/>: <paramref name="name"/> when given (and not "auto"), else the
    /// family recognised in the tokenizer's <c>chat_template</c>. <paramref name="key"/> names the setting in errors.
    /// </summary>
    public static ChatTemplate Resolve(string? name, ITextTokenizer tokenizer, string key)
    {
        var modelTemplate = (tokenizer as ByteLevelBpeTokenizer)?.ChatTemplate;
        ChatTemplate template;
        if (name is not null && name != "auto")
        {
            if (!Names.Contains(name))
                throw new PeftConfigurationException(key, name, $"unknown chat template (known: auto, {string.Join(", ", Names)})");
            template = ByName(name, modelTemplate);
        }
        else
        {
            if (modelTemplate is null)
                throw new PeftConfigurationException(key, name ?? "auto",
                    $"the model's tokenizer has no chat_template (tokenizer_config.json); name one of {string.Join(", ", Names)}");
            if (modelTemplate.Contains("<|start_header_id|>", StringComparison.Ordinal) && modelTemplate.Contains("<|eot_id|>", StringComparison.Ordinal))
                template = ByName(Llama3, modelTemplate);
            else if (modelTemplate.Contains("<|im_start|>", StringComparison.Ordinal) && modelTemplate.Contains("<|im_end|>", StringComparison.Ordinal))
                template = ByName(ChatMl, modelTemplate);
            else
                throw new PeftConfigurationException(key, name ?? "auto",
                    $"the model's chat_template is not one of the known families (Llama 3 header tokens, ChatML); name one of {string.Join(", ", Names)} " +
                    $"if the model was trained with it. Its start: {modelTemplate[..Math.Min(80, modelTemplate.Length)]}");
        }
        // The template's special tokens must be single tokens of this tokenizer.
        var bpe = tokenizer as ByteLevelBpeTokenizer;
        foreach (var special in new[] { template.EndOfTurn, template.BosText }.OfType<string>())
            if (bpe?.AddedTokenId(special) is null)
                throw new PeftConfigurationException(key, template.Name,
                    $"the model's tokenizer has no special token '{special}' (the {template.Name} template needs a tokenizer.json that defines it)");
        return template;
    }

    /// <summary>
    /// Token ids and labels of a conversation. Labels are the ids of each assistant message's content and its
    /// end-of-turn token, −100 everywhere else (TRL's <c>assistant_only_loss</c>). With
    /// <paramref name="addGenerationPrompt"/> the assistant header is appended (for generation). Each piece is
    /// tokenized on its own, so the label mask falls exactly on the message boundaries.
    /// </summary>
    public TokenizedExample Encode(IReadOnlyList<ChatMessage> messages, ITextTokenizer tokenizer, bool addGenerationPrompt = false)
    {
        var ids = new List<int>();
        var labels = new List<int>();
        void Add(string text, bool counted)
        {
            if (text.Length == 0) return;
            foreach (var id in tokenizer.Encode(text))
            {
                ids.Add(id);
                labels.Add(counted ? id : TokenizedExample.IgnoreIndex);
            }
        }
        if (BosText is not null) Add(BosText, false);
        else if (BosFromTokenizer && tokenizer.PrependsBos) { ids.Add(tokenizer.BosId); labels.Add(TokenizedExample.IgnoreIndex); }
        var all = DefaultSystem is not null && (messages.Count == 0 || messages[0].Role != "system")
            ? messages.Prepend(new ChatMessage("system", DefaultSystem)).ToList() : messages;
        foreach (var m in all)
        {
            bool assistant = m.Role == "assistant";
            Add(Header(m.Role), false);
            Add(TrimContent ? m.Content.Trim() : m.Content, assistant);
            if (EndOfTurn is not null) Add(EndOfTurn, assistant);
            else { ids.Add(tokenizer.EosId); labels.Add(assistant ? tokenizer.EosId : TokenizedExample.IgnoreIndex); }
            Add(AfterTurn, false);
        }
        if (addGenerationPrompt) Add(GenerationPrompt, false);
        return new TokenizedExample(ids.ToArray(), labels.ToArray());
    }

    /// <summary>The end-of-turn token's id (generation stops there).</summary>
    public int EndOfTurnId(ITextTokenizer tokenizer) => EndOfTurn is null ? tokenizer.EosId : tokenizer.Encode(EndOfTurn).Single();
}
