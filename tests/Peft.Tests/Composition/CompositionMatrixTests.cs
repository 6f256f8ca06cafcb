using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Host.Composition;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Tests.Model;
using Peft.Tests.Plugins;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Composition;

/// <summary>
/// Every kind of combination the architecture promises, composed through the real <see cref="PeftComposer"/> with
/// small test plugins loaded by the real loader (tests/TestPlugins/Composition: test-int8 quantizer, test-hook,
/// test-sgd and test-quantized-sgd optimizer strategies; tests/TestPlugins/Methods: test-scale method). The test
/// plugins record, in order, what the composer asked of them; the tests check the order and the resulting model.
/// </summary>
[Collection(CompositionLog.Collection)]
public class CompositionMatrixTests
{
    static readonly OptimizerSettings Settings = new(1e-3, 0);

    /// <summary>Compose <paramref name="keys"/> onto a fresh tiny Llama; returns the model, the result and what the plugins recorded.</summary>
    static (LlamaForCausalLM Model, ComposedRun Run, List<string> Log) Compose(params (string Key, string Value)[] keys)
    {
        var root = new ConfigurationBuilder().AddInMemoryCollection(keys.Select(k => new KeyValuePair<string, string?>(k.Key, k.Value))).Build();
        var model = TinyLlama.Create(tied: false);
        var log = CompositionLog.Start();
        var run = PeftComposer.Compose(CompositionLog.Catalog, model, root, Settings);
        return (model, run, log.ToList());
    }

    static IEnumerable<LinearSlot> Projections(LlamaForCausalLM model) => model.LinearSlots.Where(s => s.IsDecoderProjection);

    [Fact]
    public void Quantizer_then_method_the_method_wraps_the_quantized_layers()
    {
        var (model, run, log) = Compose(("quantization:name", "test-int8"), ("method:name", "test-scale"));
        using (model)
        {
            int quantized = Projections(model).Count();
            log.Should().HaveCount(quantized, "one entry per quantized slot (the method and adamw do not record)");
            log.Should().OnlyContain(e => e.StartsWith("quantize model.layers."), "the output head is never quantized");
            foreach (var slot in Projections(model))
            {
                var layer = model.GetLinear(slot.Name);
                layer.GetType().Name.Should().Be("ScaledLinear", slot.Name);
                ((IAdapterLayer)layer).BaseLayer.GetType().Name.Should().Be("Int8Linear", $"{slot.Name}: the method wrapped what the quantizer put in the slot");
            }
            model.GetLinear(model.OutputHeadName).Should().BeOfType<BaseLinear>();
            run.Adapter.Should().NotBeNull();
            run.TrainableParameters.Select(p => p.Name).Should().Equal(run.Adapter!.TrainableParameters.Select(p => p.Name));
            run.QuantizerName.Should().Be("test-int8");
            run.MethodName.Should().Be("test-scale");
        }
    }

    [Fact]
    public void Method_then_hook_the_hook_is_created_after_the_method_froze_the_base()
    {
        var (model, run, log) = Compose(("method:name", "test-scale"), ("hooks:0:name", "test-hook"), ("hooks:0:tag", "first"),
                                        ("hooks:1:name", "test-hook"), ("hooks:1:tag", "second"));
        using (model)
        {
            log.Should().Equal("hook first", "hook second");
            run.Hooks.Select(h => h.ToString()).Should().Equal("RecordingHook { Tag = first }", "RecordingHook { Tag = second }");
            var trainable = run.TrainableParameters.Select(p => p.Parameter.Handle).ToHashSet();
            foreach (var (name, p) in model.NamedParameters())
                p.requires_grad.Should().Be(trainable.Contains(p.Handle), name);
        }
    }

    [Fact]
    public void Quantizer_with_an_optimizer_that_trains_quantized_weights_needs_no_method()
    {
        // The Q-GaLore shape (int8 + galore): quantizer, no method, a strategy declaring TrainsQuantizedWeights.
        var (model, run, log) = Compose(("quantization:name", "test-int8"), ("optimizer:name", "test-quantized-sgd"));
        using (model)
        {
            int quantized = Projections(model).Count();
            log.Take(quantized).Should().OnlyContain(e => e.StartsWith("quantize "));
            log.Skip(quantized).Should().Equal($"optimizer test-quantized-sgd over {run.TrainableParameters.Count} parameters");
            run.Adapter.Should().BeNull();
            run.MethodName.Should().Be(FullFineTuning.Name);
            // the floating-point parameters train; the int8 weights are the strategy's (buffers of the quantized layers)
            var expected = model.NamedParameters().Where(p => p.Parameter.is_floating_point()).Select(p => p.Name).ToList();
            run.TrainableParameters.Select(p => p.Name).Should().Equal(expected);
            run.Optimizer.GetState().Keys.Should().BeEquivalentTo(expected, "the strategy was given exactly the trainable parameters");
            expected.Should().Contain("lm_head.weight").And.NotContain(n => n.Contains("self_attn.q_proj"));
        }
    }

    [Theory]
    [InlineData("test-sgd")]
    [InlineData(null)]   // the default, adamw
    public void Quantizer_without_a_method_is_refused_with_an_optimizer_that_cannot_train_quantized_weights(string? optimizer)
    {
        var keys = new List<(string, string)> { ("quantization:name", "test-int8") };
        if (optimizer is not null) keys.Add(("optimizer:name", optimizer));
        var root = new ConfigurationBuilder().AddInMemoryCollection(keys.Select(k => new KeyValuePair<string, string?>(k.Item1, k.Item2))).Build();
        var log = CompositionLog.Start();
        var act = () => PeftComposer.Plan(CompositionLog.Catalog, root);
        act.Should().Throw<PeftConfigurationException>()
            .Where(e => e.Key == "quantization:name")
            .WithMessage($"*optimizer '{optimizer ?? "adamw"}' does not*");
        log.Should().BeEmpty("nothing is quantized when the combination is refused");
    }

    [Fact]
    public void Method_with_an_optimizer_strategy_gets_exactly_the_adapter_parameters()
    {
        var (model, run, log) = Compose(("method:name", "test-scale"), ("method:targets", "mlp"), ("optimizer:name", "test-sgd"));
        using (model)
        {
            var adapterNames = run.Adapter!.TrainableParameters.Select(p => p.Name).ToList();
            adapterNames.Should().HaveCount(3 * model.Config.NumHiddenLayers, "gate, up and down of each layer");
            log.Should().Equal($"optimizer test-sgd over {adapterNames.Count} parameters");
            run.Optimizer.GetState().Keys.Should().BeEquivalentTo(adapterNames);
        }
    }

    [Fact]
    public void Model_preparation_comes_after_quantizer_method_and_hooks()
    {
        // bf16 frozen base: the quantizer's int8 stays int8, the adapter's scales stay float32, every other frozen weight is bf16.
        var (model, run, _) = Compose(("quantization:name", "test-int8"), ("method:name", "test-scale"), ("hooks:0:name", "test-hook"),
                                      ("training:base_dtype", "bfloat16"), ("training:activation_checkpointing", "true"));
        using (model)
        {
            model.ActivationCheckpointing.Should().BeTrue();
            var trainable = run.TrainableParameters.Select(p => p.Name).ToHashSet();
            foreach (var (name, p) in model.NamedParameters())
                p.dtype.Should().Be(trainable.Contains(name) ? ScalarType.Float32 : ScalarType.BFloat16, name);
            foreach (var slot in Projections(model))
            {
                var int8 = ((IAdapterLayer)model.GetLinear(slot.Name)).BaseLayer.Module;
                int8.buffers().Select(b => b.dtype).Should().Contain(ScalarType.Int8, slot.Name);
            }
        }
    }

    [Fact]
    public void Unknown_names_of_every_kind_are_reported_with_the_available_ones_before_any_model()
    {
        foreach (var (key, name, kind, available) in new[]
                 {
                     ("method:name", "nope", "method", "test-scale"),
                     ("quantization:name", "nope", "quantizer", "test-int8"),
                     ("optimizer:name", "nope", "optimizer strategy", "adamw"),
                     ("hooks:0:name", "nope", "hook", "test-hook"),
                 })
        {
            var root = new ConfigurationBuilder().AddInMemoryCollection([new KeyValuePair<string, string?>(key, name)]).Build();
            var act = () => PeftComposer.Plan(CompositionLog.Catalog, root);
            act.Should().Throw<PeftConfigurationException>().Where(e => e.Key == key)
                .WithMessage($"*unknown {kind} 'nope'*{available}*");
        }
    }
}

/// <summary>
/// After quantizing or wrapping, what the slot held before: a quantizer's replaced full-precision layer is freed by
/// the composer (its tensors hold no native memory); a method's wrapped base layer is kept, alive, inside the adapter.
/// </summary>
[Collection(CompositionLog.Collection)]
public class ReplacedLayerOwnershipTests
{
    [Fact]
    public void The_layers_a_quantizer_replaced_hold_no_live_tensors()
    {
        using var model = TinyLlama.Create(tied: false);
        var slots = model.LinearSlots.Where(s => s.IsDecoderProjection).ToList();
        var replaced = slots.Select(s => ((BaseLinear)model.GetLinear(s.Name)).Weight).ToList();
        var head = ((BaseLinear)model.GetLinear(model.OutputHeadName)).Weight;
        var root = new ConfigurationBuilder().AddInMemoryCollection([new("quantization:name", "test-int8"), new("optimizer:name", "test-quantized-sgd")]).Build();

        DisposeScopeManager.Statistics.Reset();
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var run = PeftComposer.Compose(CompositionLog.Catalog, model, root, new OptimizerSettings(1e-3, 0));
        run.Optimizer.Dispose();

        replaced.Should().OnlyContain(w => w.IsInvalid, "the full-precision weights the quantizer replaced are disposed");
        head.IsInvalid.Should().BeFalse("the output head was not replaced");
        DisposeScopeManager.Statistics.DisposedOutsideScopeCount.Should().BeGreaterThanOrEqualTo(replaced.Count,
            "each replaced weight (created outside any dispose scope) was disposed");
        // each slot now holds an int8 weight and a scale (2 live tensors) in place of its float weight (1)
        (DisposeScopeManager.Statistics.ThreadTotalLiveCount - liveBefore).Should().BeLessThanOrEqualTo(slots.Count,
            "no replaced layer's tensors stay alive");
    }

    [Fact]
    public void A_method_keeps_the_layer_it_wraps_alive_as_its_base()
    {
        using var model = TinyLlama.Create(tied: false);
        var slots = model.LinearSlots.Where(s => s.IsDecoderProjection).ToList();
        var bases = slots.ToDictionary(s => s.Name, s => model.GetLinear(s.Name));
        var root = new ConfigurationBuilder().AddInMemoryCollection([new("method:name", "test-scale")]).Build();
        using var optimizer = PeftComposer.Compose(CompositionLog.Catalog, model, root, new OptimizerSettings(1e-3, 0)).Optimizer;
        foreach (var slot in slots)
        {
            var wrapper = (IAdapterLayer)model.GetLinear(slot.Name);
            wrapper.BaseLayer.Should().BeSameAs(bases[slot.Name], slot.Name);
            ((BaseLinear)wrapper.BaseLayer).Weight.IsInvalid.Should().BeFalse(slot.Name);
        }
    }
}

/// <summary>The catalog with the composition test plugins, and the log they write into (one test at a time).</summary>
[CollectionDefinition(Collection, DisableParallelization = true)]
public sealed class CompositionLog
{
    public const string Collection = "composition log";
    const string Key = "peft.composition.log";

    static readonly Lazy<PluginCatalog> LazyCatalog = new(() => PluginCatalog.Load(
        [PluginTestFolders.TestPlugin("Composition"), PluginTestFolders.TestPlugin("Methods")], BuiltInServices.Register));

    public static PluginCatalog Catalog => LazyCatalog.Value;

    public static List<string> Start()
    {
        var log = new List<string>();
        AppDomain.CurrentDomain.SetData(Key, log);
        return log;
    }
}
