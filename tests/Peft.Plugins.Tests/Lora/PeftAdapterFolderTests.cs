using System.Text.Json.Nodes;
using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Formats;
using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Lora;

/// <summary>The HF PEFT adapter folder format, exercised with the real LoRA method.</summary>
public sealed class PeftAdapterFolderTests : IDisposable
{
    static string SmolAdapter => TestData.Shared("peft_adapters/smollm135m_lora_r16");
    static readonly IPeftMethod[] Methods = [new LoraMethod()];
    readonly string _dir = Path.Combine(Path.GetTempPath(), "peft-lora-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    static IAdapter TrainedAdapter(FakeLlamaModel model, string name = "default", string json = """{ "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.1 }""")
    {
        var adapter = new LoraMethod().Attach(model, name, LoraConfig.Section(json));
        using var _ = torch.no_grad();
        foreach (var (_, p) in adapter.TrainableParameters) p.copy_(torch.randn_like(p));   // as if trained
        return adapter;
    }

    [Fact]
    public void Save_then_load_round_trips_bit_identically()
    {
        torch.manual_seed(31);
        var source = TrainedAdapter(FakeLlamaModel.Tiny());
        var folder = PeftAdapterFolder.Save(source, _dir, "HuggingFaceTB/SmolLM-135M");
        folder.Should().Be(Path.GetFullPath(_dir));
        Directory.GetFiles(folder).Select(Path.GetFileName).Should().BeEquivalentTo(["adapter_config.json", "adapter_model.safetensors"]);

        var (infos, metadata, _) = Safetensors.ReadHeader(Path.Combine(folder, "adapter_model.safetensors"));
        metadata.Should().Equal(new Dictionary<string, string> { ["format"] = "pt" });
        infos.Should().OnlyContain(i => i.Name.StartsWith("base_model.model.model.layers.") && i.DType == "F32");
        infos.Select(i => i.Name).Should().Contain("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");

        var target = FakeLlamaModel.Tiny();
        var loaded = PeftAdapterFolder.Load(_dir, target, Methods);
        loaded.Should().BeOfType<LoraAdapter>();
        loaded.TargetModules.Should().Equal(source.TargetModules);
        var expected = source.GetStateDict();
        var actual = loaded.GetStateDict();
        actual.Keys.Should().BeEquivalentTo(expected.Keys);
        foreach (var (key, t) in expected) TestTensors.Identical(actual[key], t).Should().BeTrue(key);
        ((LoraAdapter)loaded).Options.LoraDropout.Should().Be(0.1);
    }

    [Fact]
    public void Adapter_config_has_sorted_keys_indent_2_and_the_PEFT_fields()
    {
        var adapter = TrainedAdapter(FakeLlamaModel.Tiny(), json: """{ "r": 4, "lora_alpha": 8, "rank_pattern": { "v_proj": 2, "b": 3 } }""");
        PeftAdapterFolder.Save(adapter, _dir, "my/base");
        var text = File.ReadAllText(Path.Combine(_dir, "adapter_config.json"));
        var config = JsonNode.Parse(text)!.AsObject();

        var keys = config.Select(kv => kv.Key).ToList();
        keys.Should().BeInAscendingOrder(StringComparer.Ordinal);
        config["rank_pattern"]!.AsObject().Select(kv => kv.Key).Should().Equal("b", "v_proj");
        text.Should().StartWith("{\n  \"alpha_pattern\": {},\n  \"base_model_name_or_path\": \"my/base\",");

        config["peft_type"]!.GetValue<string>().Should().Be("LORA");
        config["task_type"]!.GetValue<string>().Should().Be("CAUSAL_LM");
        config["r"]!.GetValue<int>().Should().Be(4);
        config["lora_alpha"]!.GetValue<int>().Should().Be(8);
        text.Should().Contain("\"lora_dropout\": 0.0");
        config["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()).Should().Equal("q_proj", "v_proj");
        config["bias"]!.GetValue<string>().Should().Be("none");
        config["use_rslora"]!.GetValue<bool>().Should().BeFalse();
        config["use_dora"]!.GetValue<bool>().Should().BeFalse();
        config["fan_in_fan_out"]!.GetValue<bool>().Should().BeFalse();
        config["inference_mode"]!.GetValue<bool>().Should().BeTrue();
        config["init_lora_weights"]!.GetValue<bool>().Should().BeTrue();
        config["peft_version"]!.GetValue<string>().Should().NotBeNullOrEmpty();
        config.ContainsKey("modules_to_save").Should().BeTrue();
        config["modules_to_save"].Should().BeNull();
        config.ContainsKey("layers_to_transform").Should().BeTrue();
    }

    [Fact]
    public void A_non_default_adapter_is_saved_in_a_sub_folder_and_loads_from_there()
    {
        torch.manual_seed(32);
        var model = FakeLlamaModel.Tiny();
        var main = TrainedAdapter(model);
        var extra = TrainedAdapter(model, "extra", """{ "r": 2, "target_modules": ["k_proj"] }""");
        PeftAdapterFolder.Save(extra, _dir, null).Should().Be(Path.Combine(Path.GetFullPath(_dir), "extra"));
        PeftAdapterFolder.Save(main, _dir, null);   // into the existing folder: keeps extra/
        File.Exists(Path.Combine(_dir, "extra", "adapter_config.json")).Should().BeTrue();
        File.Exists(Path.Combine(_dir, "adapter_config.json")).Should().BeTrue();
        Directory.GetFiles(_dir).Should().HaveCount(2, "no temporary files are left behind");

        var target = FakeLlamaModel.Tiny();
        var loaded = PeftAdapterFolder.Load(_dir, target, Methods, "extra");
        loaded.TargetModules.Should().OnlyContain(m => m.EndsWith("k_proj"));
        TestTensors.Identical(loaded.GetStateDict()["model.layers.1.self_attn.k_proj.lora_B.weight"],
            extra.GetStateDict()["model.layers.1.self_attn.k_proj.lora_B.weight"]).Should().BeTrue();
    }

    [Fact]
    public void The_real_SmolLM_adapter_lands_on_the_right_modules()
    {
        // SmolLM-135M's attention shapes (hidden 576, 9 heads, 3 KV heads x 64 -> v_proj 576 -> 192), 30 layers.
        torch.manual_seed(33);
        var model = new FakeLlamaModel(FakeLlamaModel.SmolLM135M, kinds: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"], withHead: false, scale: 0.02);
        var adapter = PeftAdapterFolder.Load(SmolAdapter, model, Methods);

        adapter.TargetModules.Should().HaveCount(60);
        var file = Safetensors.Load(Path.Combine(SmolAdapter, "adapter_model.safetensors"));
        try
        {
            file.Should().HaveCount(120);
            foreach (var (key, tensor) in file)
            {
                var module = key["base_model.model.".Length..key.IndexOf(".lora_", StringComparison.Ordinal)];
                var layer = model.GetLinear(module).Should().BeOfType<LoraLinear>().Subject;
                var param = key.EndsWith("lora_A.weight") ? layer.LoraA("default") : layer.LoraB("default");
                TestTensors.Identical(param, tensor).Should().BeTrue(key);
            }
            var v = (LoraLinear)model.GetLinear("model.layers.7.self_attn.v_proj");
            v.LoraA("default").shape.Should().Equal(16, 576);
            v.LoraB("default").shape.Should().Equal(192, 16);
            v.Scaling("default").Should().Be(2.0);   // lora_alpha 32 / r 16
            model.GetLinear("model.layers.7.self_attn.k_proj").Should().BeOfType<TestLinear>();

            // y = x W^T + 2 * x A^T B^T with the file's A and B
            using var x = torch.randn(2, 576);
            using var w = v.BaseLayer.DenseWeight();
            var a = file["base_model.model.model.layers.7.self_attn.v_proj.lora_A.weight"];
            var b = file["base_model.model.model.layers.7.self_attn.v_proj.lora_B.weight"];
            using var expected = x.matmul(w.t()) + 2.0 * x.matmul(a.t()).matmul(b.t());
            v.eval();
            using var y = v.forward(x);
            TestTensors.MaxAbsDiff(y, expected).Should().BeLessThan(1e-5);
        }
        finally
        {
            foreach (var t in file.Values) t.Dispose();
        }
    }

    /// <summary>Copy the adapter folder with a modified tensor set.</summary>
    string WriteVariant(Action<Dictionary<string, Tensor>> change)
    {
        var tensors = Safetensors.Load(Path.Combine(SmolAdapter, "adapter_model.safetensors"));
        change(tensors);
        var dir = Path.Combine(_dir, "variant");
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(SmolAdapter, "adapter_config.json"), Path.Combine(dir, "adapter_config.json"));
        Safetensors.Save(Path.Combine(dir, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    static FakeLlamaModel SmallSmol() =>
        new(FakeLlamaModel.SmolLM135M with { NumHiddenLayers = 2 }, kinds: ["self_attn.q_proj", "self_attn.v_proj"], withHead: false);

    static Action<Dictionary<string, Tensor>> KeepLayers(int n) => t =>
    {
        foreach (var key in t.Keys.Where(k => !Enumerable.Range(0, n).Any(i => k.Contains($".layers.{i}.self_attn."))).ToList())
        {
            t[key].Dispose();
            t.Remove(key);
        }
    };

    [Fact]
    public void A_tensor_that_matches_no_module_is_an_error_naming_the_key()
    {
        var dir = WriteVariant(KeepLayers(3));   // layer 2 has no module in a 2-layer model
        var model = SmallSmol();
        var act = () => PeftAdapterFolder.Load(dir, model, Methods);
        act.Should().Throw<PeftFormatException>().WithMessage("*'base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight'*matches no module*");
        model.LinearLayerNames.Should().OnlyContain(n => model.GetLinear(n) is TestLinear, "a failed load leaves the model as it was");
    }

    [Fact]
    public void A_wrong_shape_is_an_error_naming_the_key_and_both_shapes()
    {
        var dir = WriteVariant(t =>
        {
            KeepLayers(2)(t);
            const string key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
            t[key].Dispose();
            t[key] = torch.zeros(576, 16);
        });
        var act = () => PeftAdapterFolder.Load(dir, SmallSmol(), Methods);
        act.Should().Throw<PeftFormatException>()
            .WithMessage("*'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'*[576, 16]*[192, 16]*");
    }

    [Fact]
    public void A_missing_tensor_is_an_error_naming_the_key()
    {
        var dir = WriteVariant(t =>
        {
            KeepLayers(2)(t);
            const string key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
            t[key].Dispose();
            t.Remove(key);
        });
        var act = () => PeftAdapterFolder.Load(dir, SmallSmol(), Methods);
        act.Should().Throw<PeftFormatException>().WithMessage("*'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight' is missing*");
    }

    [Fact]
    public void The_GPT2_Conv1D_adapter_is_refused_with_a_message_naming_the_key()
    {
        var act = () => PeftAdapterFolder.Load(TestData.Shared("peft_adapters/tiny_gpt2_lora"), FakeLlamaModel.Tiny(), Methods);
        act.Should().Throw<PeftFormatException>().WithMessage("*adapter_config.json*'bias'*lora_only*");
    }

    [Fact]
    public void Config_problems_are_errors_naming_the_file()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "adapter_config.json"), "{ not json");
        var act = () => PeftAdapterFolder.Load(_dir, FakeLlamaModel.Tiny(), Methods);
        act.Should().Throw<PeftFormatException>().WithMessage("*adapter_config.json*not valid JSON*");

        File.WriteAllText(Path.Combine(_dir, "adapter_config.json"), """{ "peft_type": "IA3", "target_modules": ["q_proj"] }""");
        File.WriteAllBytes(Path.Combine(_dir, "adapter_model.safetensors"), File.ReadAllBytes(Path.Combine(SmolAdapter, "adapter_model.safetensors")));
        act.Should().Throw<PeftFormatException>().WithMessage("*peft_type 'IA3'*lora (LORA)*");

        File.WriteAllText(Path.Combine(_dir, "adapter_config.json"), """{ "peft_type": "LORA", "use_dora": true, "target_modules": ["q_proj"] }""");
        act.Should().Throw<PeftFormatException>().WithMessage("*'LORA' with use_dora true*");

        var missing = () => PeftAdapterFolder.Load(Path.Combine(_dir, "nope"), FakeLlamaModel.Tiny(), Methods);
        missing.Should().Throw<PeftFormatException>().WithMessage("*nope*not found*");
    }
}
