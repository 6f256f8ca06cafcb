using Peft.Abstractions;
using Peft.Plugins.Lora;

namespace Peft.Plugins.Tests.Lora;

public sealed class LoraOptionsTests
{
    [Fact]
    public void Binds_PEFT_key_names_with_PEFT_defaults()
    {
        var d = LoraOptions.FromConfiguration(LoraConfig.Section("""{ "name": "lora" }"""));
        (d.R, d.LoraAlpha, d.LoraDropout, d.UseRsLora, d.Bias, d.FanInFanOut).Should().Be((8, 8.0, 0.0, false, "none", false));
        d.Initialization.Should().Be(LoraInitialization.Default);

        var o = LoraOptions.FromConfiguration(LoraConfig.Section("""
            { "name": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": true,
              "init_lora_weights": "gaussian", "target_modules": ["q_proj", "k_proj"], "layers_to_transform": [0, 2] }
            """));
        (o.R, o.LoraAlpha, o.LoraDropout, o.UseRsLora).Should().Be((16, 32.0, 0.05, true));
        o.Initialization.Should().Be(LoraInitialization.Gaussian);
        o.TargetModules.Should().Equal("q_proj", "k_proj");
        o.TargetModulesRegex.Should().BeNull();
        o.LayersToTransform.Should().Equal(0, 2);
    }

    [Theory]
    [InlineData("true", LoraInitialization.Default)]
    [InlineData("\"default\"", LoraInitialization.Default)]
    [InlineData("false", LoraInitialization.Random)]
    [InlineData("\"pissa\"", LoraInitialization.Pissa)]
    public void Init_lora_weights_accepts_PEFT_values(string json, LoraInitialization expected) =>
        LoraOptions.FromConfiguration(LoraConfig.Section($$"""{ "init_lora_weights": {{json}} }""")).Initialization.Should().Be(expected);

    [Theory]
    [InlineData("""{ "r": 0 }""", "Method:r", "0")]
    [InlineData("""{ "r": -4 }""", "Method:r", "-4")]
    [InlineData("""{ "lora_dropout": 1 }""", "Method:lora_dropout", "1")]
    [InlineData("""{ "lora_dropout": -0.1 }""", "Method:lora_dropout", "-0.1")]
    [InlineData("""{ "bias": "all" }""", "Method:bias", "all")]
    [InlineData("""{ "fan_in_fan_out": true }""", "Method:fan_in_fan_out", "True")]
    [InlineData("""{ "init_lora_weights": "olora" }""", "Method:init_lora_weights", "olora")]
    [InlineData("""{ "init_lora_weights": "pissa_niter_4" }""", "Method:init_lora_weights", "pissa_niter_4")]
    [InlineData("""{ "rank": 8 }""", "Method:rank", "8")]
    [InlineData("""{ "target_modules": "q_proj(" }""", "Method:target_modules", "q_proj(")]
    [InlineData("""{ "rank_pattern": { "q_proj": 0 } }""", "Method:rank_pattern:q_proj", "0")]
    public void Bad_values_name_the_key_and_the_value(string json, string key, string value)
    {
        var act = () => LoraOptions.FromConfiguration(LoraConfig.Section(json));
        var e = act.Should().Throw<PeftConfigurationException>().Which;
        e.Key.Should().Be(key);
        e.Value.Should().Be(value);
    }

    [Fact]
    public void Reads_the_fields_of_a_real_PEFT_adapter_config()
    {
        var json = File.ReadAllText(TestData.Shared("peft_adapters/smollm135m_lora_r16/adapter_config.json"));
        var o = LoraOptions.FromAdapterConfig(System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject());
        (o.R, o.LoraAlpha, o.LoraDropout, o.UseRsLora).Should().Be((16, 32.0, 0.05, false));
        o.TargetModules.Should().Equal("v_proj", "q_proj");
        o.LayersToTransform.Should().BeNull();
    }

    [Fact]
    public void The_GPT2_Conv1D_adapter_is_refused_by_name()
    {
        // tiny_gpt2_lora uses fan_in_fan_out (GPT-2 Conv1D stores weights as (in, out)) and bias "lora_only".
        var json = File.ReadAllText(TestData.Shared("peft_adapters/tiny_gpt2_lora/adapter_config.json"));
        var act = () => LoraOptions.FromAdapterConfig(System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject());
        act.Should().Throw<PeftConfigurationException>().Which.Key.Should().BeOneOf("bias", "fan_in_fan_out");
    }

    [Fact]
    public void Adapter_config_is_bound_by_the_same_strict_binder_as_configuration()
    {
        var json = File.ReadAllText(TestData.Shared("peft_adapters/smollm135m_lora_r16/adapter_config.json"));
        var config = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        config["lora_alpa"] = 16;   // a typo is refused by name, as in configuration
        var act = () => LoraOptions.FromAdapterConfig(config);
        var e = act.Should().Throw<PeftConfigurationException>().Which;
        (e.Key, e.Value).Should().Be(("lora_alpa", "16"));
        e.Message.Should().Contain("unknown key");

        config.Remove("lora_alpa");
        config["r"] = "sixteen";
        act.Should().Throw<PeftConfigurationException>().Which.Key.Should().Be("r");

        // Every PEFT bookkeeping key is accepted and ignored; a feature that changes the computation is refused by name.
        config["r"] = 16;
        config["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("lm_head");
        act.Should().Throw<PeftConfigurationException>().Which.Key.Should().Be("modules_to_save");
    }

    [Fact]
    public void Adapter_config_and_configuration_give_the_same_options()
    {
        const string body = """{ "r": 4, "lora_alpha": 6.5, "lora_dropout": 0.1, "use_rslora": true, "target_modules": "q_proj|v_proj", "rank_pattern": { "q_proj": 2 }, "alpha_pattern": { "v_proj": 3 }, "init_lora_weights": "gaussian" }""";
        var fromConfig = LoraOptions.FromConfiguration(LoraConfig.Section(body));
        var adapterJson = System.Text.Json.Nodes.JsonNode.Parse(body)!.AsObject();
        adapterJson["peft_type"] = "LORA";
        adapterJson["task_type"] = "CAUSAL_LM";
        adapterJson["use_dora"] = false;
        var fromFile = LoraOptions.FromAdapterConfig(adapterJson);
        foreach (var o in new[] { fromConfig, fromFile })
        {
            (o.R, o.LoraAlpha, o.LoraDropout, o.UseRsLora, o.TargetModulesRegex, o.Initialization).Should().Be((4, 6.5, 0.1, true, "q_proj|v_proj", LoraInitialization.Gaussian));
            o.RankPattern.Should().Equal(new Dictionary<string, int> { ["q_proj"] = 2 });
            o.AlphaPattern.Should().Equal(new Dictionary<string, double> { ["v_proj"] = 3 });
        }
    }
}
