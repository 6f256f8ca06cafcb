using Peft.Host.Data;
using Peft.Host.Tokenization;

namespace Peft.Host.Generation;

/// <summary><c>generate --chat</c>: one user message formatted with a chat template, the assistant's reply generated.</summary>
public static class ChatGeneration
{
    /// <summary>
    /// Format <paramref name="userMessage"/> as a conversation of one user turn plus the assistant header, generate
    /// until the template's end-of-turn token (or EOS, or the token budget), and return the reply's text.
    /// </summary>
    public static string Reply(TextGenerator generator, ITextTokenizer tokenizer, string? templateName, string userMessage,
                               GenerationOptions options, Action<string>? onText = null)
    {
        var template = ChatTemplate.Resolve(templateName, tokenizer, "--chat-template");
        var prompt = template.Encode([new ChatMessage("user", userMessage)], tokenizer, addGenerationPrompt: true).InputIds;
        var decoder = new IncrementalDecoder(tokenizer);
        generator.GenerateIds(prompt, options with { StopIds = [.. options.StopIds, template.EndOfTurnId(tokenizer)] }, id =>
        {
            var piece = decoder.Add(id);
            if (piece.Length > 0) onText?.Invoke(piece);
        });
        var rest = decoder.Flush();
        if (rest.Length > 0) onText?.Invoke(rest);
        return decoder.Text;
    }
}
