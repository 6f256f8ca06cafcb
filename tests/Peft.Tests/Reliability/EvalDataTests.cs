using System.Text.Json.Nodes;
using Peft.Host.Data;
using Peft.Host.Evaluation;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 item 8: eval reads the data users have. The README's TinyStories sample is 5 stories separated by
/// <c>&lt;|endoftext|&gt;</c> lines (it was scored as 2 documents with the separators as text, loss 1.744), and
/// instruction JSONL is scored as training scores it.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class EvalDataTests(Stories260KFixture fx)
{
    static double JsonLoss(string stdout) => JsonNode.Parse(stdout.TrimEnd('\n').Split('\n')[^1])!["loss"]!.GetValue<double>();

    [Fact]
    public void The_endoftext_separator_splits_the_sample_into_its_five_stories_and_is_not_scored()
    {
        var path = TestData.Repo("tinystories/cs336_tinystories_sample.txt");
        var r = RunKit.Peft("eval", "--model", fx.ModelDir, "--data", path, "--json");
        r.Code.Should().Be(0, r.Err);
        r.Out.Should().Contain("documents   5");

        // by hand: the stories are the text between the separator lines
        var lines = File.ReadAllLines(path);
        var stories = new List<string>();
        var current = new List<string>();
        foreach (var line in lines)
        {
            if (line.Trim() == "<|endoftext|>") { stories.Add(string.Join("\n", current).Trim()); current.Clear(); }
            else current.Add(line);
        }
        if (string.Join("", current).Trim().Length > 0) stories.Add(string.Join("\n", current).Trim());
        stories.Should().HaveCount(5);
        stories.Should().NotContain(s => s.Contains("endoftext"));
        var expected = Evaluator.Evaluate(fx.Model, fx.Tokenizer, stories);
        JsonLoss(r.Out).Should().BeApproximately(expected.Loss, 1e-9);
        expected.Loss.Should().BeInRange(1.1, 1.45, "split into its stories the sample scores near the author's 1.2968 (1.744 with the separators as text)");
    }

    [Fact]
    public void Instruction_jsonl_is_scored_on_the_response_tokens_as_training_scores_it()
    {
        var dir = fx.NewDir("eval-instr");
        Directory.CreateDirectory(dir);
        var rows = File.ReadLines(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl")).Take(12).ToList();
        var path = Path.Combine(dir, "held_out.jsonl");
        File.WriteAllLines(path, rows);

        var r = RunKit.Peft("eval", "--model", fx.ModelDir, "--data", path, "--json");
        r.Code.Should().Be(0, r.Err);
        var tokens = JsonNode.Parse(r.Out.TrimEnd('\n').Split('\n')[^1])!["tokens"]!.GetValue<long>();

        // the scored tokens are exactly the response tokens + EOS of each row (the prompt is context only)
        long responseTokens = rows.Sum(row =>
        {
            var o = JsonNode.Parse(row)!;
            var prompt = fx.Tokenizer.Encode(AlpacaPromptTemplate.Format(o["instruction"]!.GetValue<string>(), o["input"]?.GetValue<string>()));
            var response = fx.Tokenizer.Encode(o["output"]!.GetValue<string>());
            return Math.Min(response.Count + 1, 512 - 1 - prompt.Count); // + EOS, within the context
        });
        tokens.Should().Be(responseTokens);
        r.Out.Should().Contain("documents   12");
    }
}
