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

/// <summary>QLoRA composed at run time (nf4 quantizer from the QLoRA plugin + lora method) on the real stories260K.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class QLoraTrainingOnLlamaTests(Stories260KFixture fx)
{
    static IConfigurationRoot Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    /// <summary>The held (buffer) tensors of every quantized slot, by slot name, copied.</summary>
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
    public void Nf4_replaces_every_decoder_projection_frees_the_fp32_weights_and_holds_at_most_4_2_bits()
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        var replaced = model.LinearSlots.Where(s => s.IsDecoderProjection)
            .ToDictionary(s => s.Name, s => model.named_parameters().First(p => p.name == s.Name + ".weight").parameter);
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var composed = PeftComposer.Compose(catalog, model, Config(("quantization:name", "nf4"), ("method:name", "lora")), new TrainingOptions().ToOptimizerSettings());
        using (composed.Optimizer) { }

        replaced.Should().HaveCount(5 * 7);
        replaced.Values.Should().OnlyContain(p => p.IsInvalid, "the full-precision weights a quantizer replaced are disposed");
        model.named_parameters().Select(p => p.name).Should().NotContain(n => n.Contains("_proj.weight") || n.Contains("base_layer.weight"),
            "no fp32 projection weight is left in the model");

        long weights = model.LinearSlots.Where(s => s.IsDecoderProjection).Sum(s => s.Parameters);
        long bytes = PackedState(model).Values.Sum(b => (long)b.Length) + replaced.Count * sizeof(float);   // + nested offset per layer
        (8.0 * bytes / weights).Should().BeLessThanOrEqualTo(4.2);
        model.named_parameters().Should().Contain(p => p.name == "model.embed_tokens.weight", "embeddings stay full precision");
    }

    [Fact]
    public void QLoRA_training_lowers_the_held_out_loss_and_leaves_the_packed_base_bit_identical()
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var root = Config(("quantization:name", "nf4"), ("quantization:block_size", "64"), ("quantization:double_quant", "true"),
                          ("method:name", "lora"), ("method:r", "4"), ("method:lora_alpha", "8"),
                          ("method:target_modules:0", "q_proj"), ("method:target_modules:1", "v_proj"), ("method:target_modules:2", "down_proj"));
        var training = new TrainingOptions { Seed = 3, BatchSize = 4, MaxSteps = 12, LearningRate = 5e-3, LrScheduler = "constant", LogEvery = 100, CheckpointEvery = 0, EvalBatches = 4 };
        torch.manual_seed(training.Seed);
        var composed = PeftComposer.Compose(catalog, model, root, training.ToOptimizerSettings());
        composed.QuantizerName.Should().Be("nf4");
        composed.TrainableParameters.Should().HaveCount(5 * 3 * 2).And.OnlyContain(p => p.Name.Contains(".lora_"));
        var packedBefore = PackedState(model);
        packedBefore.Should().HaveCount(5 * 7 * 3);

        var data = TrainingDataSet.Load(new DataOptions
        {
            Path = Path.Combine(Stories260KFixture.DataDir, "..", "alpaca_libre", "alpaca_libre_ok.jsonl"),
            Format = "instruction", SeqLen = 128, ValidationFraction = 0.1, MaxRows = 160,
        }, fx.Tokenizer, training.Seed);
        var (lossBefore, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        using (composed.Optimizer)
            Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = composed.Optimizer,
                Hooks = [], Data = data, Options = training, OutputDirectory = fx.NewDir("qlora"),
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
