using Peft.Host.Formats;
using Peft.Host.Generation;
using Peft.Host.Tokenization;
using Peft.Tests.Import;

namespace Peft.Tests.Tokenization;

public sealed class SentencePieceTokenizerTests
{
    static readonly SentencePieceTokenizer Tok = SentencePieceTokenizer.Load(Stories260KFixture.TokenizerModel);

    [Fact]
    public void Ids_match_sentencepiece_for_tok512()
    {
        // Reference ids from SentencePiece itself (sp.encode) for tok512.model.
        Tok.Encode("Once upon a time").Should().Equal(403, 407, 261, 378);
        Tok.Encode("naïve café").Should().Equal(297, 412, 198, 178, 360, 280, 412, 431, 485); // ï and é via byte fallback
    }

    [Fact]
    public void Special_ids_and_vocabulary_are_those_of_the_model()
    {
        Tok.VocabSize.Should().Be(512);
        Tok.BosId.Should().Be(1);
        Tok.EosId.Should().Be(2);
        Tok.Encode("Once upon a time", addBos: true, addEos: true).Should().Equal(1, 403, 407, 261, 378, 2);
    }

    [Theory]
    [InlineData("Once upon a time")]
    [InlineData("naïve café")]
    [InlineData("Lily said, \"Mom, look!\"\nHer mom smiled, and a tab\there.")]
    public void Decode_round_trips(string text)
    {
        Tok.Decode(Tok.Encode(text)).Should().Be(text);
        Tok.Decode(Tok.Encode(text, addBos: true)).Should().Be(text, "BOS is dropped and the dummy-prefix space stripped");
    }

    [Fact]
    public void Repeated_spaces_are_collapsed_as_this_models_normalizer_asks()
    {
        // tok512.model's normalizer spec has remove_extra_whitespaces = true (SentencePiece's default), so
        // SentencePiece encodes "a  b" like "a b".
        Tok.Encode("Two  spaces").Should().Equal(Tok.Encode("Two spaces"));
    }

    [Fact]
    public void Incremental_decoding_emits_whole_characters_and_adds_up_to_the_full_text()
    {
        var ids = Tok.Encode("naïve café");
        var decoder = new IncrementalDecoder(Tok);
        var pieces = ids.Select(decoder.Add).Append(decoder.Flush()).ToList();
        string.Concat(pieces).Should().Be("naïve café");
        pieces.Should().NotContain(p => p.Contains('\uFFFD'), "a piece never ends inside a UTF-8 sequence");
        Tok.Decode(new[] { ids[0] }).Should().Be("n", "the first piece (\"▁n\") loses the dummy-prefix space, as llama2.c prints after BOS");
        pieces[0].Should().Be("n");
        pieces[2].Should().Be("", "the first byte of 'ï' alone is not a character yet");
        pieces[3].Should().Be("ï");
    }

    [Fact]
    public void Missing_or_invalid_file_is_an_error_naming_it()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"no-such-{Guid.NewGuid():N}.model");
        var act = () => SentencePieceTokenizer.Load(missing);
        act.Should().Throw<PeftFormatException>().WithMessage($"*{missing}*not found*");

        var garbage = Path.GetTempFileName();
        try
        {
            File.WriteAllText(garbage, "this is not a protobuf");
            var bad = () => SentencePieceTokenizer.Load(garbage);
            bad.Should().Throw<PeftFormatException>().WithMessage($"*{garbage}*");
        }
        finally { File.Delete(garbage); }
    }
}
