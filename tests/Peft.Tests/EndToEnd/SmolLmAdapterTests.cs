using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>A real adapter written by HF PEFT 0.12 loaded onto the host's Llama built with SmolLM-135M's shapes.</summary>
public sealed class SmolLmAdapterTests
{
    static string AdapterDir => TestData.Shared("peft_adapters/smollm135m_lora_r16");

    [Fact]
    public void Every_tensor_of_the_real_PEFT_adapter_lands_on_its_module()
    {
        var config = new LlamaConfig
        {
            HiddenSize = 576, IntermediateSize = 1536, NumHiddenLayers = 30, NumAttentionHeads = 9, NumKeyValueHeads = 3,
            VocabSize = 49152, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5, TieWordEmbeddings = true,
        };
        // bf16 storage and no random init: the base values do not matter here, only the shapes and names
        using var model = new LlamaForCausalLM(config, ScalarType.BFloat16, initialize: false);
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var adapter = PeftAdapterFolder.Load(AdapterDir, model, catalog.Services.GetServices<IPeftMethod>());

        adapter.TargetModules.Should().HaveCount(60);   // q_proj and v_proj in 30 layers
        var file = Safetensors.Load(Path.Combine(AdapterDir, "adapter_model.safetensors"));
        file.Should().HaveCount(120);
        var state = adapter.GetStateDict();
        foreach (var (key, t) in file)
        {
            var name = key["base_model.model.".Length..];
            state[name].shape.Should().Equal(t.shape, key);
            state[name].to(t.dtype).bytes.ToArray().Should().Equal(t.bytes.ToArray(), key);
            t.Dispose();
        }
        state["model.layers.7.self_attn.v_proj.lora_B.weight"].shape.Should().Equal(192, 16);   // 3 KV heads x 64
        state["model.layers.7.self_attn.q_proj.lora_A.weight"].shape.Should().Equal(16, 576);
        model.NamedParameters().Select(p => p.Name).Should().Contain("model.layers.29.self_attn.q_proj.lora_A.default.weight");
    }
}
