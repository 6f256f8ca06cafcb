using System.Text.Json.Nodes;
using Peft.Host.Data;
using Peft.Host.Evaluation;
using Peft.Host.Model;
using Peft.Host.Tokenization;
using Peft.Tests.Import;
using Peft.Tests.Tokenization;
using TorchSharp;

namespace Peft.Tests.Data;

/// <summary>
/// Tokenizers without a BOS token (Qwen2.5: tokenizer_config <c>bos_token</c> null, <c>add_bos_token</c> false, a
/// post-processor that adds nothing) start every sequence with its first real token, as transformers does; and the
/// <c>plain</c> chat template, for tokenizers with no chat template or chat special tokens (stories260K).
/// </summary>
public sealed class NoBosAndPlainChatTests
{
    /// <summary>The Llama 3 vocabulary configured as Qwen2.5 configures its own: no BOS, EOS &lt;|end_of_text|&gt;.</summary>
    static ByteLevelBpeTokenizer QwenStyle(string dir)
    {
        var json = JsonNode.Parse(File.ReadAllText(Llama3TokenizerFiles.TokenizerJson))!.AsObject();
        json["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            new JsonObject { ["bos_token"] = null, ["eos_token"] = "<|end_of_text|>", ["add_bos_token"] = false }.ToJsonString());
        return ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"), modelBosId: 128001, modelEosIds: [128001]);
    }

    [Fact]
    public void Without_a_bos_token_text_instructions_and_eval_start_at_the_first_real_token()
    {
        var dir = Directory.CreateTempSubdirectory("peft-nobos-").FullName;
        try
        {
            var tok = QwenStyle(dir);
            tok.PrependsBos.Should().BeFalse();
            const string a = "Once upon a time there was a cat.", b = "The end.";

            // text: documents joined by EOS only, no BOS anywhere (transformers' tokenizer(text) adds none)
            var text = Path.Combine(dir, "t.txt");
            File.WriteAllText(text, a + "\n\n" + b + "\n");
            var loaded = PlainTextDataset.Load(text, tok, seqLen: 512);
            loaded.Examples[0].InputIds.Should().Equal([.. tok.Encode(a), tok.EosId, .. tok.Encode(b), tok.EosId]);

            // instruction rows: prompt tokens first, then the response and EOS (labels only there)
            var ex = InstructionDataset.Tokenize("Say hi.", null, "Hi!", tok, seqLen: 512);
            var prompt = tok.Encode(AlpacaPromptTemplate.Format("Say hi.", null));
            ex.InputIds.Should().Equal([.. prompt, .. tok.Encode("Hi!"), tok.EosId]);
            ex.Labels.Take(prompt.Count).Should().OnlyContain(l => l == TokenizedExample.IgnoreIndex);

            // eval: the first token is context only, so a document of n tokens predicts n − 1
            using var model = new LlamaForCausalLM(new LlamaConfig
            {
                HiddenSize = 8, IntermediateSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 2,
                VocabSize = 128256, MaxPositionEmbeddings = 64, BosTokenId = null, EosTokenIds = [128001],
            });
            Evaluator.Evaluate(model, tok, [a, b]).Tokens.Should().Be(tok.Encode(a).Count - 1 + tok.Encode(b).Count - 1);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void The_plain_template_works_with_a_sentencepiece_tokenizer_and_trains_only_the_assistant_turns()
    {
        var tok = SentencePieceTokenizer.Load(Stories260KFixture.TokenizerModel);
        var template = ChatTemplate.Resolve("plain", tok, "data:chat_template");
        template.Name.Should().Be("plain");
        var e = template.Encode([new("user", "Hi"), new("assistant", " Hello there. ")], tok);
        // [BOS] User: Hi [EOS] Assistant: Hello there. [EOS]
        IReadOnlyList<int> user = tok.Encode("User:"), hi = tok.Encode("Hi"), asst = tok.Encode("Assistant:"), hello = tok.Encode("Hello there.");
        int[] expected = [tok.BosId, .. user, .. hi, tok.EosId, .. asst, .. hello, tok.EosId];
        e.InputIds.Should().Equal(expected);
        int start = expected.Length - hello.Count - 1;
        e.Labels.Select((l, i) => l == TokenizedExample.IgnoreIndex ? -1 : i).Where(i => i >= 0)
            .Should().Equal(Enumerable.Range(start, hello.Count + 1), "the assistant's content and its EOS only");
        template.EndOfTurnId(tok).Should().Be(tok.EosId);
        // generation prompt: the assistant header after the user turn
        var g = template.Encode([new("user", "Hi")], tok, addGenerationPrompt: true);
        g.InputIds.Should().Equal([tok.BosId, .. user, .. hi, tok.EosId, .. asst]);

        // the model's template ("auto") is refused for a tokenizer without one, naming the names to choose from
        var act = () => ChatTemplate.Resolve("auto", tok, "data:chat_template");
        act.Should().Throw<Peft.Abstractions.PeftConfigurationException>().WithMessage("*plain*");
    }

    [Fact]
    public void The_committed_chat_sample_loads_with_the_plain_template_on_stories260K()
    {
        var tok = SentencePieceTokenizer.Load(Stories260KFixture.TokenizerModel);
        var path = TestData.Repo("chat_sample.jsonl");
        var loaded = ChatDataset.Load(path, tok, ChatTemplate.ByName("plain"), seqLen: 256);
        loaded.Rows.Should().BeGreaterThanOrEqualTo(40);
        loaded.Examples.Should().OnlyContain(x => x.CountedTokens > 0);
        File.ReadLines(path).Count(l => l.Contains("\"system\"")).Should().BeGreaterThan(0, "the sample has system turns");
        File.ReadLines(path).Count(l => l.Split("\"assistant\"").Length > 2).Should().BeGreaterThan(0, "and multi-turn conversations");
    }
}
