using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Host.Model;

namespace Peft.Tests.Model;

public sealed class LlamaConfigTests
{
    // The shape of a real HF Llama config (SmolLM-135M's), with the keys HF configs carry besides the architecture.
    const string HfConfig = """
        {
          "architectures": ["LlamaForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 0,
          "eos_token_id": [0, 2],
          "hidden_act": "silu",
          "hidden_size": 576,
          "initializer_range": 0.02,
          "intermediate_size": 1536,
          "max_position_embeddings": 2048,
          "model_type": "llama",
          "num_attention_heads": 9,
          "num_hidden_layers": 30,
          "num_key_value_heads": 3,
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": null,
          "rope_theta": 10000.0,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.40.1",
          "use_cache": true,
          "vocab_size": 49152
        }
        """;

    [Fact]
    public void Reads_an_HF_config_and_keeps_the_keys_it_does_not_model()
    {
        var c = LlamaConfig.FromJson(HfConfig, "config.json");
        (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.VocabSize)
            .Should().Be((576, 1536, 30, 9, 3, 49152));
        c.HeadDim.Should().Be(64);
        c.RmsNormEps.Should().Be(1e-5);
        c.TieWordEmbeddings.Should().BeTrue();
        c.BosTokenId.Should().Be(0);
        c.EosTokenIds.Should().Equal(0, 2);
        c.TorchDtype.Should().Be("bfloat16");
        c.OtherKeys.Select(kv => kv.Key).Should().BeEquivalentTo("attention_dropout", "pretraining_tp", "transformers_version", "use_cache");

        var again = LlamaConfig.FromJson(c.ToJson(), "again.json");
        again.ToJson().Should().Be(c.ToJson(), "writing and reading back is stable");
        JsonNode.Parse(c.ToJson())!["transformers_version"]!.GetValue<string>().Should().Be("4.40.1");
    }

    [Fact]
    public void Optional_keys_take_HF_defaults()
    {
        var c = LlamaConfig.FromJson("""{"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}""", "c.json");
        c.NumKeyValueHeads.Should().Be(8, "num_key_value_heads defaults to num_attention_heads");
        c.MaxPositionEmbeddings.Should().Be(2048);
        c.RmsNormEps.Should().Be(1e-6);
        c.RopeTheta.Should().Be(10000);
        c.TieWordEmbeddings.Should().BeFalse();
        c.EosTokenIds.Should().Equal(2);
    }

    [Theory]
    [InlineData("\"hidden_size\": -64", "*'hidden_size'*-64*positive integer*")]
    [InlineData("\"hidden_size\": \"64\"", "*'hidden_size'*\"64\"*")]
    [InlineData("\"hidden_size\": 64.5", "*'hidden_size'*64.5*")]
    [InlineData("\"num_key_value_heads\": 3", "*'num_key_value_heads'*3*divide num_attention_heads 8*")]
    [InlineData("\"num_attention_heads\": 7", "*'num_attention_heads'*7*divide hidden_size 64*")]
    [InlineData("\"rms_norm_eps\": 0", "*'rms_norm_eps'*0*positive*")]
    [InlineData("\"hidden_act\": \"gelu\"", "*'hidden_act'*'gelu'*only 'silu'*")]
    [InlineData("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", "*'rope_scaling'*linear*not supported*")]
    [InlineData("\"model_type\": \"gpt2\"", "*'model_type'*model type 'gpt2' is not supported*")]
    [InlineData("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}", "*'rope_scaling'*type 'yarn' is not supported*")]
    [InlineData("\"head_dim\": 7", "*'head_dim'*7*odd*")]
    [InlineData("\"tie_word_embeddings\": \"yes\"", "*'tie_word_embeddings'*yes*true or false*")]
    [InlineData("\"eos_token_id\": 600", "*'eos_token_id'*600*vocab_size 512*")]
    public void Invalid_values_are_rejected_naming_the_file_key_and_value(string entry, string message)
    {
        // A valid config with one entry overridden.
        var config = JsonNode.Parse("""{"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}""")!.AsObject();
        foreach (var (k, v) in JsonNode.Parse("{" + entry + "}")!.AsObject()) config[k] = v?.DeepClone();
        var json = config.ToJsonString();
        var act = () => LlamaConfig.FromJson(json, "/models/x/config.json");
        act.Should().Throw<PeftFormatException>().WithMessage("/models/x/config.json*").WithMessage(message);
    }

    [Fact]
    public void A_missing_required_key_is_named()
    {
        var act = () => LlamaConfig.FromJson("""{"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8}""", "c.json");
        act.Should().Throw<PeftFormatException>().WithMessage("c.json: required key 'vocab_size' is missing");
        var notJson = () => LlamaConfig.FromJson("{ nope", "c.json");
        notJson.Should().Throw<PeftFormatException>().WithMessage("c.json: not a JSON object*");
    }
}
