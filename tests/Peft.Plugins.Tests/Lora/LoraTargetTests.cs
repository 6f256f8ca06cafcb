using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;

namespace Peft.Plugins.Tests.Lora;

public sealed class LoraTargetTests
{
    static readonly LoraMethod Method = new();

    static LoraAdapter Attach(FakeLlamaModel model, string json, string name = "default") =>
        (LoraAdapter)Method.Attach(model, name, LoraConfig.Section(json));

    [Fact]
    public void Default_targets_are_q_proj_and_v_proj()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, """{ "name": "lora" }""");
        adapter.TargetModules.Should().Equal(
            "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
            "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj");
        model.GetLinear("model.layers.0.self_attn.q_proj").Should().BeOfType<LoraLinear>();
        model.GetLinear("model.layers.0.self_attn.k_proj").Should().BeOfType<TestLinear>();
    }

    [Fact]
    public void Targets_come_from_the_models_slots_not_from_parsing_names()
    {
        // A layout unlike Llama's: the layer index is not in the name and the short names are the slots' own.
        // The fake throws from LayerIndexOf, so only LinearSlot's ShortName / LayerIndex / Kind can be used.
        LinearSlot[] slots =
        [
            new("enc.first.attn_q", "attn_q", 0, LinearKind.AttentionQuery, 8, 8),
            new("enc.first.ffn", "ffn", 0, LinearKind.MlpUp, 8, 16),
            new("enc.second.attn_q", "attn_q", 1, LinearKind.AttentionQuery, 8, 8),
            new("enc.second.ffn", "ffn", 1, LinearKind.MlpUp, 8, 16),
            new("head", "head", null, LinearKind.OutputHead, 8, 32),
        ];
        var model = new FakeSlotsModel(FakeLlamaModel.Tiny().Shape, slots);
        var one = (LoraAdapter)Method.Attach(model, "one", LoraConfig.Section("""{ "target_modules": ["attn_q"], "layers_to_transform": [1] }"""));
        one.TargetModules.Should().Equal("enc.second.attn_q");
        var all = (LoraAdapter)Method.Attach(model, "all", LoraConfig.Section("""{ "target_modules": "all-linear" }"""));
        all.TargetModules.Should().Equal("enc.first.attn_q", "enc.first.ffn", "enc.second.attn_q", "enc.second.ffn");   // not the head
        all.ToAdapterConfig()["target_modules"]!.ToJsonString().Should().Be("""["attn_q","ffn"]""");
    }

    [Fact]
    public void List_entries_match_whole_names_or_dotted_suffixes()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, """{ "target_modules": ["mlp.down_proj", "model.layers.1.self_attn.o_proj", "proj"] }""");
        // "proj" is neither a full name nor a ".proj" suffix of any module: it matches nothing.
        adapter.TargetModules.Should().Equal(
            "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj");
    }

    [Fact]
    public void A_string_is_a_regex_that_must_match_the_full_name()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, """{ "target_modules": "model\\.layers\\.[02]\\.self_attn\\.(k|v)_proj" }""");
        adapter.TargetModules.Should().Equal(
            "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.2.self_attn.k_proj", "model.layers.2.self_attn.v_proj");

        // A partial match is not enough: "k_proj" alone matches no full name.
        var act = () => Attach(FakeLlamaModel.Tiny(), """{ "target_modules": "k_proj" }""");
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'Method:target_modules'*'k_proj'*matches no linear layer*");
    }

    [Fact]
    public void All_linear_wraps_every_linear_but_the_output_head()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, """{ "target_modules": "all-linear" }""");
        adapter.TargetModules.Should().HaveCount(3 * 7);
        adapter.TargetModules.Should().NotContain("lm_head");
        model.GetLinear("lm_head").Should().BeOfType<TestLinear>();
        // Written back as PEFT does: the list of module kinds it stood for.
        adapter.ToAdapterConfig()["target_modules"]!.AsArray().Select(n => n!.GetValue<string>())
            .Should().BeEquivalentTo(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    }

    [Fact]
    public void Layers_to_transform_restricts_by_layer_index()
    {
        var model = FakeLlamaModel.Tiny(layers: 4);
        var adapter = Attach(model, """{ "target_modules": ["q_proj", "lm_head", "model.layers.0.mlp.up_proj"], "layers_to_transform": [1, 3] }""");
        // As in PEFT, the layer filter applies to suffix matches; an entry equal to the full name is always taken.
        adapter.TargetModules.Should().Equal("model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj", "model.layers.3.self_attn.q_proj", "lm_head");

        var single = Attach(FakeLlamaModel.Tiny(layers: 4), """{ "target_modules": ["v_proj"], "layers_to_transform": 2 }""");
        single.TargetModules.Should().Equal("model.layers.2.self_attn.v_proj");
    }

    [Fact]
    public void Rank_and_alpha_patterns_override_per_module()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, """
            { "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
              "rank_pattern": { "layers\\.1\\.self_attn\\.q_proj": 2 },
              "alpha_pattern": { "v_proj": 3 } }
            """);
        var q0 = adapter.Layer("model.layers.0.self_attn.q_proj");
        var q1 = adapter.Layer("model.layers.1.self_attn.q_proj");
        var v2 = adapter.Layer("model.layers.2.self_attn.v_proj");
        (q0.Rank("default"), q0.Alpha("default")).Should().Be((4, 8.0));
        (q1.Rank("default"), q1.Alpha("default")).Should().Be((2, 8.0));
        (v2.Rank("default"), v2.Alpha("default")).Should().Be((4, 3.0));
        q1.LoraA("default").shape.Should().Equal(2, 16);
        q1.LoraB("default").shape.Should().Equal(16, 2);
        q1.Scaling("default").Should().Be(4.0);
        v2.Scaling("default").Should().Be(0.75);
    }

    [Fact]
    public void Pattern_keys_match_at_a_dot_boundary_only()
    {
        var options = LoraOptions.FromConfiguration(LoraConfig.Section("""{ "rank_pattern": { "proj": 2, "q_proj": 3 } }"""));
        // "proj" would need "(.*\.)?proj$": q_proj ends in "_proj", not ".proj", so "q_proj" is the first match.
        LoraTargetSelector.RankFor(options, "model.layers.0.self_attn.q_proj").Should().Be(3);
        LoraTargetSelector.RankFor(options, "model.layers.0.self_attn.k_proj").Should().Be(8);
        LoraTargetSelector.RankFor(options, "proj").Should().Be(2);
    }

    [Fact]
    public void A_list_that_matches_nothing_names_target_modules_and_its_value()
    {
        var act = () => Attach(FakeLlamaModel.Tiny(), """{ "target_modules": ["query", "value"] }""");
        act.Should().Throw<PeftConfigurationException>()
            .WithMessage("*'Method:target_modules'*'[query, value]'*matches no linear layer*")
            .Which.Key.Should().Be("Method:target_modules");
    }

    [Fact]
    public void Regex_target_with_layers_to_transform_is_refused()
    {
        var act = () => Attach(FakeLlamaModel.Tiny(), """{ "target_modules": ".*q_proj", "layers_to_transform": [0] }""");
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'Method:layers_to_transform'*regex*");
    }
}
