using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Training;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// LISA (the <c>lisa</c> hook loaded at run time from plugins/Lisa) through the composition root and the trainer on
/// the imported stories260K Llama (5 decoder layers, tied embeddings): what trains in each interval, the optimizer
/// state held, exact resume, and LISA + LoRA with no code written for the pair.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class LisaTrainingTests(Stories260KFixture fx)
{
    const int Interval = 4;

    static IConfigurationRoot Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    static readonly (string, string)[] Lisa = [("hooks:0:name", "lisa"), ("hooks:0:k", "2"), ("hooks:0:interval", Interval.ToString())];

    static readonly (string, string)[] Lora =
    [
        ("method:name", "lora"), ("method:r", "4"), ("method:lora_alpha", "8"),
        ("method:target_modules:0", "q_proj"), ("method:target_modules:1", "v_proj"), ("method:target_modules:2", "down_proj"),
    ];

    static TrainingOptions Options(int steps, Action<TrainingOptions>? change = null)
    {
        var o = new TrainingOptions { Seed = 3, BatchSize = 4, MaxSteps = steps, LearningRate = 1e-3, LrScheduler = "constant", LogEvery = 1, CheckpointEvery = 0, EvalBatches = 4, EvalEvery = 0 };
        change?.Invoke(o);
        return o;
    }

    TrainingDataSet Data(int seed) => TrainingDataSet.Load(new DataOptions
    {
        Path = Path.Combine(Stories260KFixture.DataDir, "..", "alpaca_libre", "alpaca_libre_ok.jsonl"),
        Format = "instruction", SeqLen = 256, ValidationFraction = 0.1, MaxRows = 400,
    }, fx.Tokenizer, seed);

    sealed record Composed(LlamaForCausalLM Model, ComposedRun Run, PluginCatalog Catalog) : IDisposable
    {
        public void Dispose() { Run.Optimizer.Dispose(); Model.Dispose(); Catalog.Dispose(); }
    }

    Composed Compose(TrainingOptions o, params (string, string)[] pairs)
    {
        var model = HfModelFolder.Load(fx.ModelDir);
        var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        torch.manual_seed(o.Seed);
        return new Composed(model, PeftComposer.Compose(catalog, model, Config(pairs), o.ToOptimizerSettings()), catalog);
    }

    static TrainingRun Run(Composed c, TrainingDataSet data, TrainingOptions o, string outDir, ITrainingHook? probe = null) => new()
    {
        Model = c.Model, TrainableParameters = c.Run.TrainableParameters, Optimizer = c.Run.Optimizer,
        Hooks = probe is null ? c.Run.Hooks : [.. c.Run.Hooks, probe], Data = data, Options = o, OutputDirectory = outDir,
        Output = new NoOutput(),
        WriteLossCurve = false,
    };

    sealed class NoOutput : ITrainingOutput { public void WriteFinal(string directory) { } }

    /// <summary>
    /// Runs after the lisa hook: at the start of each interval it copies every parameter; at its end it lists the
    /// parameters that changed and the optimizer state held, read from the tensors the optimizer returns.
    /// </summary>
    sealed class IntervalProbe(IReadOnlyList<(string Name, Parameter Parameter)> all, ITrainingHook lisa) : ITrainingHook
    {
        Dictionary<string, byte[]>? _start;
        public List<(int[] Active, HashSet<string> Changed, long StateBytes, HashSet<string> WithState)> Intervals { get; } = new();
        int[] _active = [];

        public void OnStepStart(TrainingContext context)
        {
            if (context.Step % Interval != 0) return;
            _active = lisa.SaveState()!["active_layers"]!.AsArray().Select(n => n!.GetValue<int>()).ToArray();
            _start = all.ToDictionary(p => p.Name, p => p.Parameter.bytes.ToArray());
        }

        public void OnStepEnd(TrainingContext context)
        {
            if ((context.Step + 1) % Interval != 0) return;
            var changed = all.Where(p => !p.Parameter.bytes.ToArray().AsSpan().SequenceEqual(_start![p.Name])).Select(p => p.Name).ToHashSet();
            var state = context.Optimizer.GetState();
            long bytes = state.Values.Sum(t => t.NumberOfElements * t.ElementSize);
            var withState = state.Keys.Select(k => k[..k.LastIndexOf('.')]).ToHashSet();
            Intervals.Add((_active, changed, bytes, withState));
        }
    }

    [Fact]
    public void Lisa_trains_only_the_sampled_layers_holds_no_more_state_after_10_switches_and_lowers_the_held_out_loss()
    {
        var o = Options(10 * Interval);
        using var c = Compose(o, Lisa);
        var model = c.Model;
        c.Run.TrainableParameters.Select(p => p.Parameter.Handle).Should().BeEquivalentTo(
            model.NamedParameters().Select(p => p.Parameter.Handle).Distinct(), "full fine-tuning: LISA switches among every parameter");
        var data = Data(o.Seed);
        var (lossBefore, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);

        var probe = new IntervalProbe(c.Run.TrainableParameters, c.Run.Hooks[0]);
        var outDir = fx.NewDir("lisa");
        var result = Trainer.Run(Run(c, data, o, outDir, probe));
        var (lossAfter, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        lossAfter.Should().BeLessThan(lossBefore - 0.05, "LISA lowers the held-out loss");

        // the always-trainable parts: everything outside the decoder layers (tied embedding = head, final norm)
        var outside = c.Run.TrainableParameters.Where(p => model.LayerIndexOf(p.Name) is null).Select(p => p.Name).ToHashSet();
        outside.Should().BeEquivalentTo(["model.embed_tokens.weight", "model.norm.weight"]);
        var sizes = c.Run.TrainableParameters.ToDictionary(p => p.Name, p => p.Parameter.numel());

        probe.Intervals.Should().HaveCount(10);
        var layersSeen = new HashSet<int>();
        foreach (var (active, changed, bytes, withState) in probe.Intervals)
        {
            active.Should().HaveCount(2);
            layersSeen.UnionWith(active);
            var expected = c.Run.TrainableParameters.Select(p => p.Name)
                .Where(n => model.LayerIndexOf(n) is not { } l || active.Contains(l)).ToHashSet();
            changed.Should().BeEquivalentTo(expected, $"in the interval of layers [{string.Join(", ", active)}] exactly those layers and the always-trainable parts change");
            withState.Should().BeEquivalentTo(expected, "the optimizer holds state for what trains now, nothing else");
            // AdamW: exp_avg + exp_avg_sq (fp32, shaped like p) + an int64 step per parameter
            bytes.Should().Be(expected.Sum(n => 2 * 4 * sizes[n] + 8));
        }
        layersSeen.Should().HaveCountGreaterThan(2, "different layers were sampled over 10 intervals");
        probe.Intervals[^1].StateBytes.Should().BeLessThanOrEqualTo(probe.Intervals[0].StateBytes, "the state held after 10 switches is no larger than after the first");

        // metrics.jsonl and the summary record the layers of each interval
        var lines = File.ReadAllLines(Path.Combine(outDir, MetricsLog.FileName)).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).Where(n => n["hook"] is not null).ToList();
        lines.Select(n => n["step"]!.GetValue<int>()).Should().Equal(Enumerable.Range(0, 10).Select(i => i * Interval + 1));
        lines.Select(n => string.Join(",", n["active_layers"]!.AsArray().Select(x => x!.GetValue<int>())))
            .Should().Equal(probe.Intervals.Select(i => string.Join(",", i.Active)));
        var intervals = result.Summary.Hooks![0]!["state"]!["intervals"]!.AsArray();
        intervals.Select(n => string.Join(",", n!["layers"]!.AsArray().Select(x => x!.GetValue<int>())))
            .Should().Equal(probe.Intervals.Select(i => string.Join(",", i.Active)));
    }

    [Fact]
    public void Lisa_with_lora_trains_the_sampled_layers_weights_and_the_other_layers_adapters()
    {
        var o = Options(6 * Interval, o => o.LearningRate = 2e-3);
        using var c = Compose(o, [.. Lora, .. Lisa]);
        var model = c.Model;
        bool IsAdapter(string name) => name.Contains(".lora_");
        var adapterCount = c.Run.Adapter!.TrainableParameters.Count;
        adapterCount.Should().Be(5 * 3 * 2);
        // the composer added what the hook declared: every decoder layer's own weights, the embedding and the final norm
        c.Run.TrainableParameters.Take(adapterCount).Select(p => p.Name).Should().Equal(c.Run.Adapter.TrainableParameters.Select(p => p.Name));
        var own = c.Run.TrainableParameters.Skip(adapterCount).Select(p => p.Name).ToList();
        own.Should().Contain(["model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.4.self_attn.k_proj.weight",
                              "model.layers.2.input_layernorm.weight", "model.embed_tokens.weight", "model.norm.weight"]);
        own.Should().HaveCount(5 * (7 + 2) + 2);
        own.Where(IsAdapter).Should().BeEmpty();

        var data = Data(o.Seed);
        var (lossBefore, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        var probe = new IntervalProbe(c.Run.TrainableParameters, c.Run.Hooks[0]);
        Trainer.Run(Run(c, data, o, fx.NewDir("lisa-lora"), probe));
        var (lossAfter, _) = Trainer.Evaluate(model, data.Validation, 4, 4, data.PadId);
        lossAfter.Should().BeLessThan(lossBefore - 0.05, "LISA + LoRA lowers the held-out loss");

        probe.Intervals.Should().HaveCount(6);
        foreach (var (active, changed, _, withState) in probe.Intervals)
        {
            // sampled layer: own weights train, adapter frozen; other layers: adapter trains, own weights frozen
            var expected = c.Run.TrainableParameters.Select(p => p.Name).Where(n => model.LayerIndexOf(n) switch
            {
                null => true,
                int l => active.Contains(l) != IsAdapter(n),
            }).ToHashSet();
            changed.Should().BeEquivalentTo(expected, $"interval of layers [{string.Join(", ", active)}]");
            withState.Should().BeEquivalentTo(expected, "state only for what trains in this interval");
        }
    }

    [Fact]
    public void A_lisa_run_interrupted_mid_interval_and_resumed_is_bit_identical()
    {
        const int steps = 10;
        TrainingOptions Make() => Options(steps, o => { o.CheckpointEvery = 3; o.WeightDecay = 0.1; o.KeepLastCheckpoints = 0; });
        var data = Data(3);

        using var full = Compose(Make(), Lisa);
        var uninterruptedDir = fx.NewDir("lisa-full");
        var uninterrupted = Trainer.Run(Run(full, data, Make(), uninterruptedDir));

        var splitDir = fx.NewDir("lisa-split");
        List<StepRecord> firstSteps;
        using (var first = Compose(Make(), Lisa))
        using (var cancel = new CancellationTokenSource())
        {
            // stop after step 6: intervals start at steps 0, 4, 8, so the run stops in the middle of the second
            var stop = new CallbackProbe(c => { if (c.Step == 5) cancel.Cancel(); });
            var half = Trainer.Run(Run(first, data, Make(), splitDir, stop), cancel.Token);
            half.FinalStep.Should().Be(6);
            firstSteps = half.Steps.ToList();
        }
        var saved = CheckpointStore.ReadState(CheckpointStore.PathOf(splitDir, 6));
        saved.Hooks![0]!["state"]!["active_layers"]!.AsArray().Should().HaveCount(2, "the checkpoint carries the active layers");

        using var resumedRun = Compose(Make(), Lisa);
        var o = Make();
        o.Resume = "latest";
        var resumed = Trainer.Run(Run(resumedRun, data, o, splitDir));
        resumed.StartStep.Should().Be(6);

        firstSteps.Concat(resumed.Steps).Select(s => (s.Step, s.Loss, s.GradNorm))
            .Should().Equal(uninterrupted.Steps.Select(s => (s.Step, s.Loss, s.GradNorm)));
        foreach (var ((name, a), (_, b)) in full.Model.NamedParameters().Zip(resumedRun.Model.NamedParameters()))
            a.bytes.ToArray().Should().Equal(b.bytes.ToArray(), $"{name} is bit-identical");
        resumed.Summary.Hooks!.ToJsonString().Should().Be(uninterrupted.Summary.Hooks!.ToJsonString());
    }

    sealed class CallbackProbe(Action<TrainingContext> onStepEnd) : ITrainingHook
    {
        public void OnStepEnd(TrainingContext context) => onStepEnd(context);
    }
}
