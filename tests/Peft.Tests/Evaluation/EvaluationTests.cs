using Peft.Host.Evaluation;
using Peft.Host.Formats;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Evaluation;

[Collection(Stories260KCollection.Name)]
public sealed class EvaluationTests(Stories260KFixture fx)
{
    static readonly string[] Docs =
    [
        "Once upon a time, there was a little girl named Lily. She loved to play outside.",
        "Tom had a red ball.\nHe gave it to his friend Sam. Sam was happy!",
        "The sun was hot.",
    ];

    /// <summary>Sum over i >= 1 of -log softmax(logits[i-1])[ids[i]] for one window, computed element by element.</summary>
    double HandNll(IReadOnlyList<int> ids)
    {
        using var scope = torch.NewDisposeScope();
        var input = torch.tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0);
        var logProbs = fx.Model.Logits(input)[0].to(ScalarType.Float64).log_softmax(-1);
        double nll = 0;
        for (int i = 1; i < ids.Count; i++) nll -= logProbs[i - 1, ids[i]].item<double>();
        return nll;
    }

    [Fact]
    public void Loss_is_the_token_weighted_mean_nll_of_BOS_plus_tokens()
    {
        double nll = 0;
        long tokens = 0;
        foreach (var doc in Docs)
        {
            var ids = new List<int> { 1 };
            ids.AddRange(fx.Tokenizer.Encode(doc));
            nll += HandNll(ids);
            tokens += ids.Count - 1;
        }
        var result = Evaluator.Evaluate(fx.Model, fx.Tokenizer, Docs);
        result.Tokens.Should().Be(tokens);
        result.Loss.Should().BeApproximately(nll / tokens, 1e-5);
        result.Perplexity.Should().BeApproximately(Math.Exp(result.Loss), 1e-9);
        result.Loss.Should().BeInRange(0.5, 3.0, "a trained model: far below ln(512) = 6.24");
    }

    [Fact]
    public void Batched_windows_and_the_full_logits_give_the_one_by_one_loss()
    {
        // Windows of very different lengths in one batch: right padding must change nothing.
        var docs = Docs.Append(string.Join(" ", Enumerable.Repeat("Lily and Tom went to the park to play with a big red ball.", 3))).ToArray();
        var single = Evaluator.Evaluate(fx.Model, fx.Tokenizer, docs, contextLength: 24, batchSize: 1, lossChunkTokens: 0);
        var batched = Evaluator.Evaluate(fx.Model, fx.Tokenizer, docs, contextLength: 24, batchSize: 5, lossChunkTokens: 7);
        batched.Tokens.Should().Be(single.Tokens);
        batched.Loss.Should().BeApproximately(single.Loss, 1e-5);
        batched.Seconds.Should().BeGreaterThan(0);
        batched.TokensPerSecond.Should().Be(batched.Tokens / batched.Seconds);
    }

    [Fact]
    public void Long_documents_are_split_into_windows_that_predict_every_token_once()
    {
        var doc = string.Join(" ", Enumerable.Repeat("Lily and Tom went to the park to play with a big red ball.", 4));
        var ids = new List<int> { 1 };
        ids.AddRange(fx.Tokenizer.Encode(doc));
        ids.Count.Should().BeGreaterThan(40);

        // Windows of 16: [0,16) [15,31) [30,46) ... each predicting its tokens after the first.
        double nll = 0;
        for (int start = 0; start < ids.Count - 1; start += 15)
            nll += HandNll(ids.GetRange(start, Math.Min(16, ids.Count - start)));
        var result = Evaluator.Evaluate(fx.Model, fx.Tokenizer, [doc], contextLength: 16);
        result.Tokens.Should().Be(ids.Count - 1);
        result.Loss.Should().BeApproximately(nll / (ids.Count - 1), 1e-5);

        var whole = Evaluator.Evaluate(fx.Model, fx.Tokenizer, [doc]);
        whole.Tokens.Should().Be(result.Tokens);
        whole.Loss.Should().BeLessThan(result.Loss, "the full context predicts the repeated sentence better than 16-token windows");
    }

    [Theory]
    [InlineData(2, 16)]
    [InlineData(16, 16)]
    [InlineData(17, 16)]
    [InlineData(100, 7)]
    [InlineData(31, 2)]
    public void Windows_cover_every_predicted_position_exactly_once(int count, int context)
    {
        var predicted = new List<int>();
        foreach (var (start, length) in Evaluator.Windows(count, context))
        {
            length.Should().BeInRange(2, context);
            predicted.AddRange(Enumerable.Range(start + 1, length - 1));
        }
        predicted.Should().Equal(Enumerable.Range(1, count - 1));
    }

    [Fact]
    public void Text_files_split_on_blank_lines_and_trim_documents()
    {
        var docs = EvalDocuments.ParseText("  first line\r\nsecond line  \r\n \t \r\n\r\nthird\n\n\n  \nfourth\n");
        docs.Should().Equal("first line\nsecond line", "third", "fourth");
    }

    [Fact]
    public void Jsonl_files_read_text_fields_and_name_a_bad_line()
    {
        var dir = fx.NewDir("jsonl");
        Directory.CreateDirectory(dir);
        var good = Path.Combine(dir, "good.jsonl");
        File.WriteAllText(good, "{\"text\": \"One.\\nTwo.\", \"id\": 1}\n\n{\"text\": \"Three.\"}\n");
        EvalDocuments.Read(good).Should().Equal("One.\nTwo.", "Three.");

        var bad = Path.Combine(dir, "bad.jsonl");
        File.WriteAllText(bad, "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n");
        var act = () => EvalDocuments.Read(bad);
        act.Should().Throw<PeftFormatException>().WithMessage($"{bad}: line 3: expected a string field \"text\"");

        File.WriteAllText(bad, "{\"text\": \"ok\"}\n{not json\n");
        act.Should().Throw<PeftFormatException>().WithMessage($"{bad}: line 2: not valid JSON*");

        var csv = Path.Combine(dir, "data.csv");
        File.WriteAllText(csv, "a,b");
        var act2 = () => EvalDocuments.Read(csv);
        act2.Should().Throw<PeftFormatException>().WithMessage("*'.csv'*expected .txt or .jsonl*");

        var empty = Path.Combine(dir, "empty.txt");
        File.WriteAllText(empty, " \n\n");
        var act3 = () => EvalDocuments.Read(empty);
        act3.Should().Throw<PeftFormatException>().WithMessage($"{empty}: no documents*");
    }
}
