using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// QLoRA + DoRA = the nf4 quantizer (QLoRA plugin) + the dora method (DoRA plugin), composed at run time with no code
/// written for the pair: DoRA reads the quantized base only through its forward and DenseWeight() (dequantized).
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class QLoraDoraTrainingTests(Stories260KFixture fx)
{
    static IConfigurationRoot Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    static Dictionary<string, byte[]> PackedState(LlamaForCausalLM model)
    {
        var result = new Dictionary<string, byte[]>();
        foreach (var (name, module) in model.named_modules())
            if (module.GetType().Name == "FourBitLinear")
                foreach (var (b, t) in module.named_buffers())
                    result[$"{name}.{b}"] = t.bytes.ToArray();
        return result;
    }

    [Fact]
    public void QLoRA_DoRA_trains_on_stories260K_lowers_the_held_out_loss_and_leaves_the_packed_base_bit_identical()
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var root = Config(("quantization:name", "nf4"), ("quantization:block_size", "64"), ("quantization:double_quant", "true"),
                          ("method:name", "dora"), ("method:r", "4"), ("method:lora_alpha", "8"),
                          ("method:target_modules:0", "q_proj"), ("method:target_modules:1", "v_proj"), ("method:target_modules:2", "down_proj"));
        var training = new TrainingOptions { Seed = 3, BatchSize = 4, MaxSteps = 12, LearningRate = 5e-3, LrScheduler = "constant", LogEvery = 100, CheckpointEvery = 0, EvalBatches = 4 };
        torch.manual_seed(training.Seed);
        var composed = PeftComposer.Compose(catalog, model, root, training.ToOptimizerSettings());
        composed.QuantizerName.Should().Be("nf4");
        composed.Adapter!.MethodName.Should().Be("dora");
        composed.TrainableParameters.Should().HaveCount(5 * 3 * 3).And.OnlyContain(p => p.Name.Contains(".lora_"));
        var packedBefore = PackedState(model);
        packedBefore.Should().HaveCount(5 * 7 * 3);

        // The magnitude starts at the row norms of the DEQUANTIZED base (B = 0).
        const string slot = "model.layers.2.mlp.down_proj";
        var magnitude = composed.Adapter.GetStateDict()[slot + ".lora_magnitude_vector"];
        var wrapped = (IAdapterLayer)model.GetLinear(slot);
        wrapped.BaseLayer.GetType().Name.Should().Be("FourBitLinear");
        using (var dequantized = wrapped.BaseLayer.DenseWeight())
        using (var norms = dequantized.pow(2).sum(1).sqrt())
        using (var diff = (norms - magnitude).abs().max())
            diff.item<float>().Should().BeLessThan(1e-5f);

        var data = TrainingDataSet.Load(new DataOptions
        {
            Path = TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl"),
            Format = "instruction", SeqLen = 128, ValidationFraction = 0.1, MaxRows = 160,
        }, fx.Tokenizer, training.Seed);
        var (lossBefore, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        using (composed.Optimizer)
            Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = composed.Optimizer,
                Hooks = [], Data = data, Options = training, OutputDirectory = fx.NewDir("qlora-dora"),
                Output = new AdapterOutput(composed.Adapter!, fx.ModelDir), WriteLossCurve = false,
            });
        var (lossAfter, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        lossAfter.Should().BeLessThan(lossBefore - 0.05);

        var packedAfter = PackedState(model);
        packedAfter.Should().HaveCount(packedBefore.Count);
        foreach (var (name, bytes) in packedAfter)
        {
            var original = packedBefore.TryGetValue(name, out var b) ? b : packedBefore[name.Replace(".base_layer.", ".")];
            bytes.Should().Equal(original, $"packed base {name} must not change");
        }
    }
}
