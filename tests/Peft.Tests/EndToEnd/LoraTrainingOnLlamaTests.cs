using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Training;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;

namespace Peft.Tests.EndToEnd;

/// <summary>The composition root + trainer on the real imported Llama with the LoRA plugin loaded at run time.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class LoraTrainingOnLlamaTests(Stories260KFixture fx)
{
    sealed class LiveTensorProbe : ITrainingHook
    {
        public List<long> Live { get; } = new();
        public void OnStepEnd(TrainingContext context) => Live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    static IConfigurationRoot Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    [Fact]
    public void Only_adapter_parameters_change_the_held_out_loss_falls_and_a_step_leaks_no_tensor()
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        var before = model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter.detach().clone());
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var root = Config(("method:name", "lora"), ("method:r", "4"), ("method:lora_alpha", "8"),
                          ("method:target_modules:0", "q_proj"), ("method:target_modules:1", "v_proj"), ("method:target_modules:2", "down_proj"));
        var training = new TrainingOptions { Seed = 3, BatchSize = 4, MaxSteps = 12, LearningRate = 5e-3, LrScheduler = "constant", LogEvery = 100, CheckpointEvery = 0, EvalBatches = 4 };
        torch.manual_seed(training.Seed);
        var composed = PeftComposer.Compose(catalog, model, root, training.ToOptimizerSettings());
        composed.TrainableParameters.Should().HaveCount(5 * 3 * 2).And.OnlyContain(p => p.Name.Contains(".lora_"));

        var data = TrainingDataSet.Load(new DataOptions
        {
            Path = TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl"),
            Format = "instruction", SeqLen = 128, ValidationFraction = 0.1, MaxRows = 160,
        }, fx.Tokenizer, training.Seed);
        var (lossBefore, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);

        var probe = new LiveTensorProbe();
        var outDir = fx.NewDir("inproc");
        using (composed.Optimizer)
            Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = composed.Optimizer,
                Hooks = [probe], Data = data, Options = training, OutputDirectory = outDir,
                Output = new AdapterOutput(composed.Adapter!, fx.ModelDir), WriteLossCurve = false,
            });
        var (lossAfter, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        lossAfter.Should().BeLessThan(lossBefore - 0.05);

        // base weights bit-identical (the LoRA wrapper renames q_proj.weight to q_proj.base_layer.weight)
        var after = model.NamedParameters().ToDictionary(p => p.Name.Replace(".base_layer.", "."), p => p.Parameter);
        foreach (var (name, t) in before)
            after[name].bytes.ToArray().Should().Equal(t.bytes.ToArray(), $"base weight {name} must not change");

        probe.Live.Should().HaveCount(12);
        probe.Live.Skip(2).Should().AllBeEquivalentTo(probe.Live[2], $"live tensors per step were {string.Join(", ", probe.Live)}");
        foreach (var t in before.Values) t.Dispose();
    }
}
