using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Tests.Training;

namespace Peft.Tests.Data;

public class InstructionDataTests
{
    readonly CharTokenizer _tok = new();

    // stanford_alpaca train.py PROMPT_DICT, copied verbatim
    const string AlpacaWithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:";
    const string AlpacaWithoutInput =
        "Below is an instruction that describes a task. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\nSay hi.\n\n### Response:";

    [Fact]
    public void Prompt_texts_are_Alpacas()
    {
        AlpacaPromptTemplate.Format("Add the numbers.", "2 and 3").Should().Be(AlpacaWithInput);
        AlpacaPromptTemplate.Format("Say hi.", "").Should().Be(AlpacaWithoutInput);
        AlpacaPromptTemplate.Format("Say hi.", null).Should().Be(AlpacaWithoutInput);
        AlpacaPromptTemplate.Format("Say hi.", "<noinput>").Should().Be(AlpacaWithoutInput);
        AlpacaPromptTemplate.Format("Use {input} literally", "x").Should().Contain("### Instruction:\nUse {input} literally\n\n### Input:\nx\n\n");
    }

    [Fact]
    public void Row_is_BOS_prompt_response_EOS_with_the_prompt_masked()
    {
        var example = InstructionDataset.Tokenize("Add the numbers.", "2 and 3", "5", _tok, seqLen: 4096);
        var prompt = _tok.Encode(AlpacaWithInput);
        int five = CharTokenizer.Alphabet.IndexOf('5') + 3;
        int[] expectedIds = [1, .. prompt, five, 2];
        int[] expectedLabels = [-100, .. Enumerable.Repeat(-100, prompt.Count), five, 2];
        example.InputIds.Should().Equal(expectedIds);
        example.Labels.Should().Equal(expectedLabels);
        example.CountedTokens.Should().Be(2, "the response token and EOS");
    }

    [Fact]
    public void Truncation_cuts_the_tail_and_a_row_without_response_tokens_is_dropped()
    {
        var prompt = _tok.Encode(AlpacaWithoutInput);
        int seqLen = 1 + prompt.Count + 2;   // room for two response tokens, not EOS
        var cut = InstructionDataset.Tokenize("Say hi.", "", "hello", _tok, seqLen);
        cut.InputIds.Should().HaveCount(seqLen);
        cut.InputIds[^2..].Should().Equal(_tok.Encode("he"));
        cut.Labels[^2..].Should().Equal(_tok.Encode("he"));
        cut.Labels[..^2].Should().OnlyContain(l => l == -100);

        using var dir = new TempDirectory();
        var path = dir.File("rows.jsonl",
            "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hello\"}\n" +
            "{\"instruction\": \"Say hi. This instruction is much longer, so its prompt fills the sequence.\", \"output\": \"hello\"}\n");
        var loaded = InstructionDataset.Load(path, _tok, seqLen);
        loaded.Rows.Should().Be(2);
        loaded.DroppedRows.Should().Be(1);
        loaded.Examples.Should().ContainSingle();
    }

    [Fact]
    public void Reads_rows_skipping_blank_lines_and_honours_max_rows()
    {
        using var dir = new TempDirectory();
        var path = dir.File("rows.jsonl",
            "{\"instruction\": \"A\", \"input\": \"x\", \"output\": \"1\"}\n\n" +
            "{\"instruction\": \"B\", \"output\": \"2\", \"extra\": 5}\n" +
            "{\"instruction\": \"C\", \"input\": null, \"output\": \"3\"}\n");
        var all = InstructionDataset.Load(path, _tok, 4096);
        all.Examples.Should().HaveCount(3);
        all.Examples[1].InputIds.Should().Equal([1, .. _tok.Encode(AlpacaPromptTemplate.Format("B", null)), .. _tok.Encode("2"), 2]);
        InstructionDataset.Load(path, _tok, 4096, maxRows: 2).Examples.Should().HaveCount(2);
    }

    [Theory]
    [InlineData("{\"instruction\": \"A\", \"output\": \"1\"}\n{\"instruction\": \"B\", \"output\": \n", ":2: not valid JSON")]
    [InlineData("{\"instruction\": \"A\", \"output\": \"1\"}\n\n{\"instruction\": \"B\"}\n", ":3: missing field \"output\"")]
    [InlineData("{\"input\": \"x\", \"output\": \"1\"}\n", ":1: missing field \"instruction\"")]
    [InlineData("{\"instruction\": 5, \"output\": \"1\"}\n", ":1: field \"instruction\" must be a string, found a number")]
    [InlineData("{\"instruction\": \"A\", \"input\": [1], \"output\": \"1\"}\n", ":1: field \"input\" must be a string, found a array")]
    [InlineData("[1, 2]\n", ":1: expected a JSON object")]
    [InlineData("\n\n", "no instruction rows")]
    public void Bad_rows_name_the_file_and_line(string contents, string expected)
    {
        using var dir = new TempDirectory();
        var path = dir.File("bad.jsonl", contents);
        var act = () => InstructionDataset.Load(path, _tok, 512);
        act.Should().Throw<PeftFormatException>().Which.Message.Should().StartWith(path).And.Contain(expected);
    }

    [Fact]
    public void The_vendored_alpaca_file_loads()
    {
        var path = TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl");
        var loaded = InstructionDataset.Load(path, _tok, 256, maxRows: 50);
        loaded.Rows.Should().Be(50);
        loaded.Examples.Should().OnlyContain(e => e.InputIds[0] == 1 && e.Length <= 256 && e.CountedTokens > 0);
    }
}
