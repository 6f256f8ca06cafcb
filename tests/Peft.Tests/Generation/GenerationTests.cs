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
