using Peft.Abstractions.Methods;
using Peft.Plugins.Lora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.Lora;

public sealed class LoraAdapterTests
{
    const string Q0 = "model.layers.0.self_attn.q_proj";
    static readonly LoraMethod Method = new();

    static IAdapter Attach(FakeLlamaModel model, string name, string json = """{ "r": 4, "lora_alpha": 8 }""") =>
        Method.Attach(model, name, LoraConfig.Section(json));

    static void FillB(IAdapter adapter, double value)
    {
        using var _ = torch.no_grad();
        foreach (var (name, p) in adapter.TrainableParameters)
            if (name.Contains(".lora_B.")) p.fill_(value);
    }

    [Fact]
    public void State_dict_uses_PEFT_keys_without_the_adapter_name()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, "my_adapter");
        var sd = adapter.GetStateDict();
        sd.Keys.Should().HaveCount(12).And.Contain(["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight"]);
        sd["model.layers.0.self_attn.q_proj.lora_A.weight"].shape.Should().Equal(4, 16);   // (r, in)
        sd["model.layers.0.self_attn.v_proj.lora_B.weight"].shape.Should().Equal(8, 4);    // (out, r)
        adapter.TrainableParameters.Should().OnlyContain(p => p.Parameter.requires_grad);

        // One naming scheme: trainable parameters are named as the model names them (adapter name included),
        // and each file key is that name without the adapter name, for the same tensor.
        var modelParams = model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        adapter.TrainableParameters.Select(p => p.Name).Should().Contain($"{Q0}.lora_A.my_adapter.weight").And.HaveCount(12);
        foreach (var (name, p) in adapter.TrainableParameters)
        {
            modelParams.Should().ContainKey(name);
            ReferenceEquals(modelParams[name], p).Should().BeTrue($"'{name}' is the model's own parameter");
            ReferenceEquals(sd[name.Replace(".my_adapter.", ".")], p).Should().BeTrue($"the file key of '{name}' drops the adapter name");
        }

        // The model's own parameter names show the wrapped base and the adapter's factors.
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        names.Should().Contain([$"{Q0}.base_layer.weight", $"{Q0}.lora_A.my_adapter.weight", $"{Q0}.lora_B.my_adapter.weight"]);
        model.NamedParameters().Where(p => p.Name.Contains("base_layer")).Should().OnlyContain(p => !p.Parameter.requires_grad);
    }

    [Fact]
    public void Two_adapters_share_one_layer_and_can_be_switched_disabled_and_deleted()
    {
        torch.manual_seed(21);
        var model = FakeLlamaModel.Tiny();
        var baseQ = model.GetLinear(Q0);
        using var x = torch.randn(3, 16);
        using var y0 = baseQ.Module.forward(x);

        var first = Attach(model, "first");
        var second = Attach(model, "second", """{ "r": 2, "lora_alpha": 2, "target_modules": ["q_proj", "k_proj"] }""");
        FillB(first, 0.1);
        FillB(second, -0.2);
        var layer = (LoraLinear)model.GetLinear(Q0);
        layer.AdapterNames.Should().Equal("first", "second");
        model.GetLinear("model.layers.0.self_attn.k_proj").Should().BeOfType<LoraLinear>().Which.AdapterNames.Should().Equal("second");

        Tensor Delta(string adapter)
        {
            using var _ = torch.no_grad();
            return x.matmul(layer.DeltaWeight(adapter).t());
        }
        using var dFirst = Delta("first");
        using var dSecond = Delta("second");

        using (var both = layer.forward(x))
        using (var expected = y0 + dFirst + dSecond)
            TestTensors.MaxAbsDiff(both, expected).Should().BeLessThan(1e-5);

        // set "second" active, "first" disabled
        first.Enabled = false;
        using (var onlySecond = layer.forward(x))
        using (var expected = y0 + dSecond)
            TestTensors.MaxAbsDiff(onlySecond, expected).Should().BeLessThan(1e-5);

        // disable all
        second.Enabled = false;
        using (var none = layer.forward(x)) TestTensors.Identical(none, y0).Should().BeTrue();
        second.Enabled = true;

        // delete "second": the layer keeps "first"; k_proj loses its only adapter and gets its base layer back
        second.Remove();
        layer.AdapterNames.Should().Equal("first");
        model.GetLinear("model.layers.0.self_attn.k_proj").Should().BeOfType<TestLinear>();
        model.NamedParameters().Should().NotContain(p => p.Name.Contains("second"));

        // deleting the last adapter restores the original base layer object in every slot
        first.Remove();
        model.GetLinear(Q0).Should().BeSameAs(baseQ);
        model.NamedParameters().Should().OnlyContain(p => !p.Name.Contains("lora_"));
        using (var restored = model.GetLinear(Q0).Module.forward(x)) TestTensors.Identical(restored, y0).Should().BeTrue();
    }

    [Fact]
    public void A_duplicate_adapter_name_is_refused()
    {
        var model = FakeLlamaModel.Tiny();
        Attach(model, "default");
        var act = () => Attach(model, "default");
        act.Should().Throw<InvalidOperationException>().WithMessage("*already has a LoRA adapter named 'default'*");
    }

    [Fact]
    public void Adapter_merge_and_unmerge_over_the_model()
    {
        torch.manual_seed(22);
        var model = FakeLlamaModel.Tiny();
        var originals = model.LinearLayerNames.ToDictionary(n => n, n => model.GetLinear(n).DenseWeight());
        var adapter = Attach(model, "default", """{ "r": 4, "lora_alpha": 8, "init_lora_weights": false }""");
        using var x = torch.randn(2, 16);
        var layer = (LoraLinear)model.GetLinear(Q0);
        using var unmerged = layer.forward(x);

        adapter.Merge();
        adapter.Merged.Should().BeTrue();
        using (var merged = layer.forward(x)) TestTensors.MaxAbsDiff(merged, unmerged).Should().BeLessThan(1e-5);
        using (var w = layer.BaseLayer.DenseWeight()) TestTensors.MaxAbsDiff(w, originals[Q0]).Should().BeGreaterThan(1e-3);

        adapter.Unmerge();
        adapter.Merged.Should().BeFalse();
        foreach (var name in adapter.TargetModules)
            using (var w = ((LoraLinear)model.GetLinear(name)).BaseLayer.DenseWeight())
                TestTensors.MaxAbsDiff(w, originals[name]).Should().BeLessThan(1e-6);
        foreach (var t in originals.Values) t.Dispose();
    }

    [Fact]
    public void Merge_and_unload_leaves_plain_base_layers_holding_W_plus_scaled_BA()
    {
        torch.manual_seed(23);
        var model = FakeLlamaModel.Tiny();
        var baseLayer = model.GetLinear(Q0);
        using var w0 = baseLayer.DenseWeight();
        var adapter = Attach(model, "default", """{ "r": 4, "lora_alpha": 8, "init_lora_weights": false }""");
        var layer = (LoraLinear)model.GetLinear(Q0);
        using var x = torch.randn(3, 16);
        using var adapted = layer.forward(x);
        var a = adapter.GetStateDict()[Q0 + ".lora_A.weight"].detach().clone();
        var b = adapter.GetStateDict()[Q0 + ".lora_B.weight"].detach().clone();

        adapter.MergeAndUnload();

        model.GetLinear(Q0).Should().BeSameAs(baseLayer);                 // the wrapper is gone
        model.NamedParameters().Should().NotContain(p => p.Name.Contains("lora_"));
        using var expected = w0 + 2.0 * b.matmul(a);                        // scaling = 8 / 4
        using (var w = baseLayer.DenseWeight()) TestTensors.MaxAbsDiff(w, expected).Should().BeLessThan(1e-6);
        using (var y = baseLayer.Module.forward(x)) TestTensors.MaxAbsDiff(y, adapted).Should().BeLessThan(1e-5);
        a.Dispose(); b.Dispose();
    }

    [Fact]
    public void A_failed_safe_merge_names_the_module_and_leaves_every_layer_unmerged()
    {
        var model = FakeLlamaModel.Tiny();
        var adapter = Attach(model, "default");
        FillB(adapter, 0.1);
        using (torch.no_grad()) adapter.GetStateDict()["model.layers.2.self_attn.v_proj.lora_A.weight"][0, 0] = float.PositiveInfinity;
        var act = () => adapter.Merge(safe: true);
        act.Should().Throw<InvalidOperationException>().WithMessage("*model.layers.2.self_attn.v_proj*");
        adapter.TargetModules.Should().OnlyContain(m => !((LoraLinear)model.GetLinear(m)).IsMerged("default"));
    }

    [Fact]
    public void Memory_estimate_counts_r_times_in_plus_out_per_target()
    {
        var shape = FakeLlamaModel.SmolLM135M;
        var estimate = Method.EstimateMemory(shape, FakeLlamaModel.SlotsFor(shape), LoraConfig.Section("""{ "r": 16, "target_modules": ["q_proj", "v_proj"] }"""))!;
        // per layer: q 16 * (576 + 576) + v 16 * (576 + 192); 30 layers. Same count as the real adapter file has.
        estimate.TrainableParameters.Should().Be(30L * (16 * (576 + 576) + 16 * (576 + 192)));
        estimate.WeightBytes.Should().Be(estimate.TrainableParameters * 4);
    }
}
