using Peft.Host.Generation;
using Peft.Tests.Import;

namespace Peft.Tests.Generation;

[Collection(Stories260KCollection.Name)]
public sealed class GenerationTests(Stories260KFixture fx)
{
    [Fact]
    public void Greedy_256_tokens_from_BOS_reproduce_the_authors_sample_exactly()
    {
        var expected = Stories260KFixture.SampleFromNotes("-t 0.0");
        expected.Should().StartWith("Once upon a time, there was a little girl named Lily.").And.EndWith("We can help you.");
        var text = new TextGenerator(fx.Model, fx.Tokenizer).Generate(null, new GenerationOptions { Temperature = 0f, MaxNewTokens = 256 });
        text.Should().Be(expected);
    }

    [Fact]
    public void Top_p_sampling_with_llama2c_seed_reproduces_the_authors_second_sample()
    {
        // ./run stories260K.bin -z tok512.bin -t 1.0 -p 0.9 -s 133742 (stops early at BOS)
        var expected = Stories260KFixture.SampleFromNotes("-t 1.0 -p 0.9 -s 133742");
        var text = new TextGenerator(fx.Model, fx.Tokenizer).Generate(null, new GenerationOptions { Temperature = 1.0f, TopP = 0.9f, Seed = 133742, MaxNewTokens = 256 });
        text.Should().Be(expected);
    }
}

[Collection(Stories260KCollection.Name)]
public sealed class GenerationLimitsTests(Stories260KFixture fx)
{
    [Fact]
    public void At_most_max_new_tokens_are_generated_and_none_is_a_stop_token()
    {
        var generator = new TextGenerator(fx.Model, fx.Tokenizer);
        var prompt = new List<int> { 1 };
        prompt.AddRange(fx.Tokenizer.Encode("Once upon a time"));
        var ids = generator.GenerateIds(prompt, new GenerationOptions { Temperature = 0f, MaxNewTokens = 7 });
        ids.Should().HaveCount(7);
        ids.Should().NotContain(new[] { 1, 2 });
        var streamed = new List<int>();
        generator.GenerateIds(prompt, new GenerationOptions { Temperature = 0f, MaxNewTokens = 7 }, streamed.Add);
        streamed.Should().Equal(ids, "greedy decoding is deterministic and every token is streamed");
        generator.GenerateIds(prompt, new GenerationOptions { MaxNewTokens = 0 }).Should().BeEmpty();
    }

    [Fact]
    public void Generation_stops_when_the_context_is_full_like_llama2c()
    {
        // A 508-token prompt in a 512-position context: positions 508..511 can still be fed, and the token sampled
        // from the last one is emitted too (llama2.c's run prints seq_len tokens in all), so 512 - 508 + 1 = 5.
        var text = File.ReadAllText(TestData.Repo("tinystories/tinystories_train_head.txt"));
        var prompt = new List<int> { 1 };
        prompt.AddRange(fx.Tokenizer.Encode(text).Take(507));
        var ids = new TextGenerator(fx.Model, fx.Tokenizer).GenerateIds(prompt, new GenerationOptions { Temperature = 0f, MaxNewTokens = 100 });
        ids.Should().HaveCount(5);

        prompt.AddRange(fx.Tokenizer.Encode(text).Skip(507).Take(5));
        var act = () => new TextGenerator(fx.Model, fx.Tokenizer).GenerateIds(prompt, new GenerationOptions());
        act.Should().Throw<ArgumentException>().WithMessage("*513 tokens*context*512*");
    }
}

public sealed class TokenSamplerTests
{
    [Fact]
    public void The_generator_is_llama2cs_xorshift()
    {
        // First outputs of run.c's random_u32 / random_f32 (compiled with gcc) for seeds 133742 and 42.
        var s = new TokenSampler(1f, 0.9f, 133742);
        new[] { s.NextUInt32(), s.NextUInt32(), s.NextUInt32(), s.NextUInt32() }
            .Should().Equal(3033531262u, 2674377904u, 2312864567u, 2287415643u);
        new TokenSampler(1f, 0.9f, 42).NextFloat().Should().Be(0.339085221f);
    }

    [Fact]
    public void Greedy_takes_the_first_maximum()
    {
        new TokenSampler(0f, 0.9f, 1).Sample([0.1f, 3f, -2f, 3f]).Should().Be(1);
    }

    [Fact]
    public void Top_p_draws_only_from_the_nucleus_in_proportion()
    {
        // p = [0.1, 0.5, 0.3, 0.1]: with top_p 0.7 the nucleus is {1, 2} (0.5 + 0.3 > 0.7); drawn as 5 : 3.
        var logits = new[] { 0.1f, 0.5f, 0.3f, 0.1f }.Select(p => MathF.Log(p)).ToArray();
        var sampler = new TokenSampler(1f, 0.7f, 12345);
        var counts = new int[4];
        for (int i = 0; i < 8000; i++) counts[sampler.Sample((float[])logits.Clone())]++;
        counts[0].Should().Be(0);
        counts[3].Should().Be(0);
        ((double)counts[1] / counts[2]).Should().BeApproximately(5.0 / 3.0, 0.15);

        // top_p 1: the whole distribution, token 0 about 10% of the time.
        var all = new TokenSampler(1f, 1f, 99);
        var zeros = Enumerable.Range(0, 8000).Count(_ => all.Sample((float[])logits.Clone()) == 0);
        ((double)zeros / 8000).Should().BeApproximately(0.1, 0.02);
    }

    [Fact]
    public void Bad_settings_are_rejected()
    {
        var zeroSeed = () => new TokenSampler(1f, 0.9f, 0);
        zeroSeed.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*seed*");
        var badTopP = () => new TokenSampler(1f, 1.5f, 1);
        badTopP.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*1.5*");
    }
}
