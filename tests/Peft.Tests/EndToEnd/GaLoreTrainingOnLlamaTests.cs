using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using Peft.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>GaLore (plugins/GaLore, loaded at run time) as the optimizer of full fine-tuning on the imported stories260K Llama.</summary>
[Collection(SerialStories260KCollection.Name)]
public sealed class GaLoreTrainingOnLlamaTests(Stories260KFixture fx)
{
    static IConfigurationRoot Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    TrainingDataSet Data(int seed) => TrainingDataSet.Load(new DataOptions
    {
        Path = TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl"),
        Format = "instruction", SeqLen = 128, ValidationFraction = 0.1, MaxRows = 120,
    }, fx.Tokenizer, seed);

    static TrainingOptions Options(int steps, Action<TrainingOptions>? change = null)
    {
        var o = new TrainingOptions { Seed = 3, BatchSize = 4, MaxSteps = steps, LearningRate = 2e-3, LrScheduler = "constant", LogEvery = 100, CheckpointEvery = 0, EvalBatches = 3, WeightDecay = 0.01 };
        change?.Invoke(o);
        return o;
    }

    sealed record Composed(LlamaForCausalLM Model, ComposedRun Run, PluginCatalog Catalog) : IDisposable
    {
        public void Dispose() { Run.Optimizer.Dispose(); Model.Dispose(); Catalog.Dispose(); }
    }

    Composed Compose(params (string, string)[] optimizer) => Compose(false, optimizer);

    Composed Compose(bool int8, params (string, string)[] optimizer)
    {
        var model = HfModelFolder.Load(fx.ModelDir);
        var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var pairs = optimizer.Select(p => ("optimizer:" + p.Item1, p.Item2)).Prepend(("optimizer:name", "galore"));
        if (int8) pairs = pairs.Append(("quantization:name", "int8"));
        var root = Config(pairs.ToArray());
        var run = PeftComposer.Compose(catalog, model, root, Options(1).ToOptimizerSettings());
        return new Composed(model, run, catalog);
    }

    static TrainingResult Train(Composed c, TrainingDataSet data, TrainingOptions o, string dir, ITrainingHook? hook = null, CancellationToken cancel = default) =>
        Trainer.Run(new TrainingRun
        {
            Model = c.Model, TrainableParameters = c.Run.TrainableParameters, Optimizer = c.Run.Optimizer, Hooks = hook is null ? [] : [hook],
            Data = data, Options = o, OutputDirectory = dir, Output = new FullModelOutput(c.Model), WriteLossCurve = false,
        }, cancel);

    static Dictionary<string, byte[]> Weights(LlamaForCausalLM model) => model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter.bytes.ToArray());

    [Fact]
    public void Full_weight_GaLore_lowers_the_held_out_loss_and_with_gap_1_the_projector_changes_every_step()
    {
        using var c = Compose(("rank", "8"), ("update_proj_gap", "1"), ("scale", "0.25"));
        c.Run.MethodName.Should().Be(FullFineTuning.Name);
        var state0 = c.Run.Optimizer.GetState();
        state0.Should().BeEmpty();
        var data = Data(3);
        var (before, _) = Trainer.Evaluate(c.Model, data.Validation, 4, 3, data.PadId);

        const string watched = "model.layers.2.mlp.up_proj.weight";   // (172, 64): std puts Vh_r (8, 64) on the right
        var projectors = new List<float[]>();
        var probe = new CallbackHook(onStepEnd: ctx => projectors.Add(ctx.Optimizer.GetState()[watched + ".projector_right"].data<float>().ToArray()));
        Train(c, data, Options(12), fx.NewDir("galore"), probe);
        var (after, _) = Trainer.Evaluate(c.Model, data.Validation, 4, 3, data.PadId);
        after.Should().BeLessThan(before - 0.05, $"held-out loss {before:0.0000} -> {after:0.0000}");

        projectors.Should().HaveCount(12);
        for (int s = 1; s < projectors.Count; s++)
            projectors[s].Should().NotEqual(projectors[s - 1], $"update_proj_gap 1 recomputes the projector at step {s + 1}");
        var state = c.Run.Optimizer.GetState();
        state[watched + ".exp_avg"].shape.Should().Equal(172, 8);
        state.Keys.Should().NotContain(k => k.StartsWith("lm_head") && k.Contains("projector"), "the head (tied to the embedding) gets AdamW");
    }

    [Fact]
    public void A_stopped_and_resumed_GaLore_run_equals_the_uninterrupted_run_bit_for_bit()
    {
        (string, string)[] galore = [("rank", "4"), ("update_proj_gap", "3"), ("proj_type", "std")];
        var data = Data(3);
        TrainingOptions Make() => Options(6, o => o.CheckpointEvery = 2);

        using var whole = Compose(galore);
        var uninterrupted = Train(whole, data, Make(), fx.NewDir("whole"));

        var dir = fx.NewDir("split");
        using var cancel = new CancellationTokenSource();
        using (var first = Compose(galore))
        {
            var stop = new CallbackHook(onStepEnd: ctx => { if (ctx.Step == 3) cancel.Cancel(); });   // after step 4: mid-gap
            Train(first, data, Make(), dir, stop, cancel.Token).FinalStep.Should().Be(4);
        }
        using var second = Compose(galore);
        using (torch.no_grad()) foreach (var (_, p) in second.Model.NamedParameters()) p.mul_(0.5);   // everything must come from the checkpoint
        var o = Make();
        o.Resume = "latest";
        var resumed = Train(second, data, o, dir);
        resumed.StartStep.Should().Be(4);
        resumed.Steps.Select(s => s.Loss).Should().Equal(uninterrupted.Steps.Skip(4).Select(s => s.Loss));
        var a = Weights(whole.Model);
        foreach (var (name, bytes) in Weights(second.Model)) bytes.Should().Equal(a[name], name);
    }

    [Fact]
    public void Layerwise_updates_give_the_ordinary_weights_and_hold_fewer_gradient_bytes()
    {
        (string, string)[] galore = [("rank", "4"), ("update_proj_gap", "2")];
        var data = Data(3);
        var o = Options(3, x => x.MaxGradNorm = 0);     // layer-wise mode has no global-norm clipping (as the official code)

        using var ordinary = Compose(galore);
        Train(ordinary, data, o, fx.NewDir("ordinary"));
        using var layerwise = Compose([.. galore, ("layerwise", "true")]);
        layerwise.Run.Optimizer.Should().BeAssignableTo<IBackwardStepOptimizer>();
        Train(layerwise, data, o, fx.NewDir("layerwise"));

        var expected = ordinary.Model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        foreach (var (name, p) in layerwise.Model.NamedParameters())
        {
            double diff = (p - expected[name]).abs().max().item<float>();
            diff.Should().BeLessThan(2e-5f, $"{name} after 3 steps");
        }
        layerwise.Run.Optimizer.GetState().Keys.Should().BeEquivalentTo(ordinary.Run.Optimizer.GetState().Keys);

        long ordinaryPeak = (long)ordinary.Run.Optimizer.GetType().GetProperty("PeakGradientBytes")!.GetValue(ordinary.Run.Optimizer)!;
        long layerwisePeak = ((IBackwardStepOptimizer)layerwise.Run.Optimizer).PeakGradientBytes;
        long all = ordinary.Run.TrainableParameters.Sum(p => p.Parameter.numel() * 4);
        ordinaryPeak.Should().Be(all, "in ordinary mode every gradient exists at the step");
        long largestLinear = fx.Model.LinearSlots.Where(s => s.IsDecoderProjection).Max(s => s.Parameters) * 4;
        long linears = fx.Model.LinearSlots.Where(s => s.IsDecoderProjection).Sum(s => s.Parameters) * 4;
        layerwisePeak.Should().BeLessThanOrEqualTo(all - linears + largestLinear, "at most one linear's gradient beside the non-linear ones");

        var bad = () => Train(layerwise, data, Options(4, x => x.MaxGradNorm = 1.0), fx.NewDir("clip"));
        bad.Should().Throw<Peft.Abstractions.PeftConfigurationException>().WithMessage("*training:max_grad_norm*layerwise*");
    }

    static Dictionary<string, byte[]> Int8Codes(LlamaForCausalLM model) => model.LinearSlots
        .Where(s => model.GetLinear(s.Name) is ITrainableQuantizedWeight)
        .ToDictionary(s => s.Name, s => ((ITrainableQuantizedWeight)model.GetLinear(s.Name)).QuantizedState["weight"].bytes.ToArray());

    [Fact]
    public void Int8_GaLore_lowers_the_loss_keeps_int8_weights_between_steps_and_writes_a_dequantized_HF_folder()
    {
        using var c = Compose(true, ("rank", "8"), ("update_proj_gap", "4"));
        c.Run.QuantizerName.Should().Be("int8");
        var slots = c.Model.LinearSlots.Where(s => s.IsDecoderProjection).ToList();
        slots.Should().OnlyContain(s => c.Model.GetLinear(s.Name) is ITrainableQuantizedWeight);
        c.Run.TrainableParameters.Should().OnlyContain(p => p.Parameter.is_floating_point() && !p.Name.Contains("_proj"), "embeddings and norms train as floats");
        var data = Data(3);
        var (before, _) = Trainer.Evaluate(c.Model, data.Validation, 4, 3, data.PadId);
        var codes0 = Int8Codes(c.Model);

        var checks = new List<bool>();
        var probe = new CallbackHook(onStepEnd: _ => checks.Add(slots.All(s =>
            ((ITrainableQuantizedWeight)c.Model.GetLinear(s.Name)).QuantizedState["weight"].dtype == ScalarType.Int8)));
        var dir = fx.NewDir("int8");
        Train(c, data, Options(12, o => o.MaxGradNorm = 0), dir, probe);
        checks.Should().HaveCount(12).And.OnlyContain(x => x, "the weights are INT8 after every step");
        var (after, _) = Trainer.Evaluate(c.Model, data.Validation, 4, 3, data.PadId);
        after.Should().BeLessThan(before - 0.05, $"held-out loss {before:0.0000} -> {after:0.0000}");
        var codes = Int8Codes(c.Model);
        codes.Count(kv => !kv.Value.SequenceEqual(codes0[kv.Key])).Should().Be(codes.Count, "every INT8 weight was updated");

        // a full HF folder, dequantized, that loads as a plain model with the same loss
        var folder = Path.Combine(dir, "hf");
        HfModelFolder.Save(c.Model, folder);
        using var reloaded = HfModelFolder.Load(folder);
        var (reloadedLoss, _) = Trainer.Evaluate(reloaded, data.Validation, 4, 3, data.PadId);
        reloadedLoss.Should().BeApproximately(after, 1e-4);

        var clip = () => Train(c, data, Options(14, o => o.MaxGradNorm = 1.0), fx.NewDir("int8clip"));
        clip.Should().Throw<Peft.Abstractions.PeftConfigurationException>().WithMessage("*training:max_grad_norm*quantized*");
    }

    [Fact]
    public void A_resumed_int8_GaLore_run_equals_the_uninterrupted_run_bit_for_bit()
    {
        (string, string)[] galore = [("rank", "4"), ("update_proj_gap", "3")];
        var data = Data(3);
        TrainingOptions Make() => Options(6, o => { o.CheckpointEvery = 2; o.MaxGradNorm = 0; });
        using var whole = Compose(true, galore);
        var uninterrupted = Train(whole, data, Make(), fx.NewDir("int8whole"));

        var dir = fx.NewDir("int8split");
        using var cancel = new CancellationTokenSource();
        using (var first = Compose(true, galore))
        {
            var stop = new CallbackHook(onStepEnd: ctx => { if (ctx.Step == 2) cancel.Cancel(); });   // after step 3: mid-gap
            Train(first, data, Make(), dir, stop, cancel.Token).FinalStep.Should().Be(3);
        }
        using var second = Compose(true, galore);
        var o = Make();
        o.Resume = "latest";
        var resumed = Train(second, data, o, dir);
        resumed.StartStep.Should().Be(3);
        resumed.Steps.Select(s => s.Loss).Should().Equal(uninterrupted.Steps.Skip(3).Select(s => s.Loss));
        var a = Weights(whole.Model);
        foreach (var (name, bytes) in Weights(second.Model)) bytes.Should().Equal(a[name], name);
        var codes = Int8Codes(whole.Model);
        foreach (var (name, bytes) in Int8Codes(second.Model)) bytes.Should().Equal(codes[name], name);
    }
}
