using Peft.Host.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

public sealed class LlamaModelTests
{
    static List<string> ExpectedHfNames(int layers, bool tied)
    {
        var names = new List<string> { "model.embed_tokens.weight" };
        for (int i = 0; i < layers; i++)
        {
            var p = $"model.layers.{i}.";
            names.AddRange(new[]
            {
                p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
                p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
                p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
            });
        }
        names.Add("model.norm.weight");
        if (!tied) names.Add("lm_head.weight");
        return names;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Parameter_names_and_shapes_are_HFs(bool tied)
    {
        using var model = TinyLlama.Create(tied);
        var named = model.NamedParameters().ToList();
        named.Select(p => p.Name).Should().Equal(ExpectedHfNames(2, tied), "HF's LlamaForCausalLM named_parameters order");
        var shapes = named.ToDictionary(p => p.Name, p => p.Parameter.shape);
        shapes["model.embed_tokens.weight"].Should().Equal(50, 32);
        shapes["model.layers.1.self_attn.q_proj.weight"].Should().Equal(32, 32);
        shapes["model.layers.1.self_attn.k_proj.weight"].Should().Equal(new long[] { 16, 32 }, "2 kv heads of head_dim 8");
        shapes["model.layers.1.self_attn.v_proj.weight"].Should().Equal(16, 32);
        shapes["model.layers.1.mlp.gate_proj.weight"].Should().Equal(48, 32);
        shapes["model.layers.1.mlp.down_proj.weight"].Should().Equal(32, 48);
        shapes["model.norm.weight"].Should().Equal(32);
        if (!tied) shapes["lm_head.weight"].Should().Equal(50, 32);
    }

    [Fact]
    public void Linear_slots_are_addressed_by_HF_module_names()
    {
        using var model = TinyLlama.Create();
        model.LinearLayerNames.Should().HaveCount(2 * 7 + 1);
        model.LinearLayerNames.Take(7).Should().Equal(
            "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj");
        model.LinearLayerNames[^1].Should().Be("lm_head");
        model.OutputHeadName.Should().Be("lm_head");

        var k = model.GetLinear("model.layers.1.self_attn.k_proj");
        k.Should().BeOfType<BaseLinear>();
        (k.InFeatures, k.OutFeatures).Should().Be((32L, 16L));
        var head = model.GetLinear("lm_head");
        (head.InFeatures, head.OutFeatures).Should().Be((32L, 50L));
        using (var w = head.DenseWeight())
            TensorAssert.Same(w, model.EmbeddingWeight).Should().BeTrue("the tied head's weight is the embedding");

        var act = () => model.GetLinear("model.layers.7.self_attn.q_proj");
        act.Should().Throw<KeyNotFoundException>().WithMessage("*'model.layers.7.self_attn.q_proj'*");

        model.LayerIndexOf("model.layers.3.mlp.up_proj").Should().Be(3);
        model.LayerIndexOf("model.layers.12.self_attn.q_proj.lora_A.weight").Should().Be(12);
        model.LayerIndexOf("model.embed_tokens.weight").Should().BeNull();
        model.LayerIndexOf("lm_head").Should().BeNull();
        model.Shape.Should().Be(new Peft.Abstractions.Model.ModelShape(32, 2, 4, 2, 48, 50, 64, true));
        model.Shape.HeadDim.Should().Be(8);
    }

    [Fact]
    public void SetLinear_replaces_the_module_used_by_forward_and_its_parameters_appear_under_the_slot_name()
    {
        using var model = TinyLlama.Create(tied: false);
        using var ids = TinyLlama.RandomIds(2, 10);
        using var before = model.forward(ids);

        const string slot = "model.layers.1.self_attn.q_proj";
        var original = model.GetLinear(slot);
        using var wrapper = new TestLoraWrapper(original, rank: 4);
        model.SetLinear(slot, wrapper);
        model.GetLinear(slot).Should().BeSameAs(wrapper);

        var names = model.NamedParameters().Select(p => p.Name).ToList();
        names.Should().Contain(new[] { $"{slot}.base_layer.weight", $"{slot}.lora_A.weight", $"{slot}.lora_B.weight" });
        names.Should().NotContain($"{slot}.weight");
        names.IndexOf($"{slot}.base_layer.weight").Should().BeLessThan(names.IndexOf("model.layers.1.self_attn.k_proj.weight"),
            "the replaced slot keeps its place in the module order");
        model.NamedParameters().Single(p => p.Name == $"{slot}.lora_A.weight").Parameter.Should().BeSameAs(wrapper.A);
        model.parameters().Should().Contain(wrapper.A, "an optimizer built from parameters() sees the adapter");

        using (var same = model.forward(ids))
            TensorAssert.Same(same, before).Should().BeTrue("B = 0: the wrapper computes exactly the base layer");

        // Make the adapter non-zero: forward must now go through it, and equal the merged dense weight W + B A.
        using (torch.no_grad()) wrapper.B.normal_(0, 0.5);
        using var adapted = model.forward(ids);
        adapted.allclose(before, rtol: 0, atol: 1e-3).Should().BeFalse("the new module is used by forward");
        using var merged = wrapper.DenseWeight();
        model.SetLinear(slot, original);
        original.SetDenseWeight(merged);
        using var viaMerge = model.forward(ids);
        viaMerge.allclose(adapted, rtol: 1e-4, atol: 1e-5).Should().BeTrue("forward through the wrapper = forward with W + B A");
        model.NamedParameters().Select(p => p.Name).Should().Equal(ExpectedHfNames(2, tied: false), "putting the base back restores the names");
    }

    [Fact]
    public void SetLinear_on_a_tied_head_keeps_the_embedding_listed_once()
    {
        using var model = TinyLlama.Create(tied: true);
        using var wrapper = new TestLoraWrapper(model.GetLinear("lm_head"), rank: 2);
        model.SetLinear("lm_head", wrapper);
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        names.Should().Contain(new[] { "lm_head.lora_A.weight", "lm_head.lora_B.weight" });
        names.Where(n => n.Contains("embed") || n.StartsWith("lm_head.base_layer")).Should().Equal("model.embed_tokens.weight");
    }

    [Fact]
    public void SetLinear_rejects_a_layer_of_the_wrong_shape()
    {
        using var model = TinyLlama.Create();
        using var wrong = new BaseLinear(32, 32);
        var act = () => model.SetLinear("model.layers.0.self_attn.k_proj", wrong);
        act.Should().Throw<ArgumentException>().WithMessage("*k_proj*16 out, 32 in*32 out, 32 in*");
    }

    [Fact]
    public void Logits_are_float32_batch_by_time_by_vocab_and_causal()
    {
        using var model = TinyLlama.Create();
        using var ids = TinyLlama.RandomIds(2, 12);
        using var logits = model.Logits(ids);
        logits.shape.Should().Equal(2, 12, 50);
        logits.dtype.Should().Be(ScalarType.Float32);

        // Change token 6 of the first row: positions 0..5 must not move, position 6 must.
        using var changed = ids.clone();
        changed[0, 6] = torch.tensor((ids[0, 6].item<long>() + 1) % 50);
        using var other = model.Logits(changed);
        TensorAssert.Same(other[0].narrow(0, 0, 6), logits[0].narrow(0, 0, 6)).Should().BeTrue();
        other[0, 6].allclose(logits[0, 6]).Should().BeFalse();
        TensorAssert.Same(other[1], logits[1]).Should().BeTrue("rows of a batch are independent");
    }

    [Fact]
    public void Incremental_decoding_with_the_kv_cache_matches_the_full_forward()
    {
        using var model = TinyLlama.Create(layers: 3);
        using var ids = TinyLlama.RandomIds(2, 20);
        using var _ = torch.no_grad();
        using var full = model.Forward(ids, null);

        // One token at a time.
        using (var cache = model.CreateKvCache(batchSize: 2))
        {
            for (int t = 0; t < 20; t++)
            {
                using var step = model.Forward(ids.narrow(1, t, 1), cache);
                (step[.., 0] - full[.., t]).abs().max().item<float>().Should().BeLessThan(1e-5f, $"position {t}");
            }
            cache.Length.Should().Be(20);
        }

        // Chunks of 5, 1 and 14 (a chunk after cached positions uses the explicit causal mask).
        using (var cache = model.CreateKvCache(batchSize: 2))
        {
            int start = 0;
            foreach (var len in new[] { 5, 1, 14 })
            {
                using var chunk = model.Forward(ids.narrow(1, start, len), cache);
                (chunk - full.narrow(1, start, len)).abs().max().item<float>().Should().BeLessThan(1e-5f, $"chunk at {start}");
                start += len;
            }
        }
    }

    [Fact]
    public void Sequences_beyond_the_context_are_rejected()
    {
        using var model = TinyLlama.Create();
        using var ids = TinyLlama.RandomIds(1, 65);
        var act = () => model.Logits(ids);
        act.Should().Throw<ArgumentException>().WithMessage("*65*max_position_embeddings 64*");
    }

    [Fact]
    public void Bf16_storage_computes_in_float32_close_to_the_fp32_model()
    {
        using var fp32 = TinyLlama.Create(tied: false);
        using var bf16 = new LlamaForCausalLM(TinyLlama.Config(tied: false), ScalarType.BFloat16, initialize: false);
        using (torch.no_grad())
        {
            var src = fp32.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
            foreach (var (name, p) in bf16.NamedParameters()) p.copy_(src[name]);
        }
        bf16.NamedParameters().Should().OnlyContain(p => p.Parameter.dtype == ScalarType.BFloat16);
        using var ids = TinyLlama.RandomIds(1, 16);
        using var a = fp32.Logits(ids);
        using var b = bf16.Logits(ids);
        b.dtype.Should().Be(ScalarType.Float32);
        (a - b).abs().max().item<float>().Should().BeLessThan(0.05f, "bf16 weights, fp32 compute");
        TensorAssert.Same(b, a).Should().BeFalse("the weights really are rounded to bf16");
    }
}
