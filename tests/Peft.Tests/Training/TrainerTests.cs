using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Host.Training;
using Microsoft.Extensions.Configuration;
using Peft.Tests.Data;
using TorchSharp;
using static Peft.Tests.Training.TrainerTestKit;
using static TorchSharp.torch;
using Peft.Host.Composition;

namespace Peft.Tests.Training;

public class TrainerTests
{
    [Fact]
    public void Full_fine_tuning_loss_falls_and_writes_weights_metrics_summary_and_curve()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var trainable = FullFineTuning.TrainableParameters(model);
        var options = Options(o => { o.MaxSteps = 40; o.LogEvery = 10; o.EvalEvery = 20; });
        var result = Trainer.Run(TrainerTestKit.Run(model, trainable, TinyData(validation: 2), options, dir.Path, lossCurve: true));

        result.Steps.Should().HaveCount(40);
        double first = result.Steps[0].Loss, last = result.Steps.TakeLast(5).Average(s => s.Loss);
        first.Should().BeGreaterThan(Math.Log(Tokenizer.VocabSize) * 0.5);
        last.Should().BeLessThan(first * 0.5, "the repetitive text is learnable");
        result.Evaluations.Select(e => e.Step).Should().Equal(20, 40);
        result.Evaluations[^1].Loss.Should().BeLessThan(result.Evaluations[0].Loss);

        var weights = Safetensors.Load(Path.Combine(dir.Path, FullModelOutput.FileName));
        weights.Keys.Should().BeEquivalentTo(model.NamedParameters().Select(p => p.Name));
        weights["lm_head.weight"].data<float>().ToArray().Should().Equal(model.Net.lm_head.weight.data<float>().ToArray());
        foreach (var t in weights.Values) t.Dispose();

        var lines = File.ReadAllLines(Path.Combine(dir.Path, MetricsLog.FileName)).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var trainLines = lines.Where(l => l.ContainsKey("loss")).ToList();
        trainLines.Select(l => (int)l["step"]!).Should().Equal(10, 20, 30, 40);
        trainLines[0].Select(kv => kv.Key).Should().Contain(["step", "loss", "lr", "tokens_per_s", "elapsed_s", "grad_norm"]);
        ((double)trainLines[0]["loss"]!).Should().BeApproximately(result.Steps.Take(10).Average(s => s.Loss), 1e-9, "a log line averages the steps since the previous one");
        lines.Where(l => l.ContainsKey("eval_loss")).Select(l => (int)l["step"]!).Should().Equal(20, 40);

        var png = File.ReadAllBytes(Path.Combine(dir.Path, LossCurvePlot.FileName));
        png[..4].Should().Equal(0x89, (byte)'P', (byte)'N', (byte)'G');

        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "training_summary.json")))!;
        long total = model.NamedParameters().Sum(p => p.Parameter.numel());
        ((long)summary["trainable_parameters"]!).Should().Be(total);
        ((double)summary["trainable_share"]!).Should().Be(1.0);
        ((long)summary["optimizer_state_bytes"]!).Should().Be(total * 8 + trainable.Count * 8, "AdamW keeps two fp32 moments and a step counter per parameter");
        ((long)summary["gradient_bytes"]!).Should().Be(total * 4);
    }

    [Fact]
    public void Only_trainable_parameters_change_and_frozen_ones_stay_bit_identical()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var trainable = model.Train("layers.1.up_proj.weight", "lm_head.weight");
        var before = Snapshot(model);
        var result = Trainer.Run(TrainerTestKit.Run(model, trainable, TinyData(), Options(o => o.MaxSteps = 5), dir.Path));
        var after = Snapshot(model);
        foreach (var (name, values) in before)
        {
            if (trainable.Any(t => t.Name == name)) after[name].Should().NotEqual(values, $"{name} trains");
            else after[name].Should().Equal(values, $"{name} is frozen");
        }
        long trainableCount = trainable.Sum(t => t.Parameter.numel());
        result.Summary.TrainableParameters.Should().Be(trainableCount);
        result.Summary.TrainableShare.Should().BeApproximately((double)trainableCount / model.NamedParameters().Sum(p => p.Parameter.numel()), 1e-12);
    }

    [Fact]
    public void A_run_stopped_and_resumed_reproduces_the_uninterrupted_losses_bit_for_bit()
    {
        // shuffled data over several epochs, accumulation, warm-up + cosine, weight decay, clipping, evaluation
        TrainingOptions Make() => Options(o =>
        {
            o.MaxSteps = 8; o.BatchSize = 3; o.GradientAccumulationSteps = 2; o.LrScheduler = "cosine"; o.WarmupSteps = 2;
            o.WeightDecay = 0.1; o.MaxGradNorm = 0.5; o.EvalEvery = 2; o.CheckpointEvery = 3; o.KeepLastCheckpoints = 2;
        });
        var data = TinyData(sequences: 10, validation: 2);

        using var full = new TempDirectory();
        var uninterruptedModel = TinyModel();
        var uninterrupted = Trainer.Run(TrainerTestKit.Run(uninterruptedModel, FullFineTuning.TrainableParameters(uninterruptedModel), data, Make(), full.Path));
        uninterrupted.Steps.Should().HaveCount(8);
        CheckpointStore.List(full.Path).Select(c => c.Step).Should().Equal([6, 8], "step-3 was pruned after step-8 was complete (keep 2)");
        Directory.GetFileSystemEntries(CheckpointStore.Root(full.Path)).Select(Path.GetFileName).Should().OnlyContain(n => n!.StartsWith("step-"), "no temporary folder is left");
        Directory.GetFiles(CheckpointStore.PathOf(full.Path, 6)).Select(Path.GetFileName).Should().BeEquivalentTo(
            CheckpointStore.TrainableFile, CheckpointStore.OptimizerFile, CheckpointStore.StateFile);

        using var split = new TempDirectory();
        using var cancel = new CancellationTokenSource();
        var firstModel = TinyModel();
        var stop = new CallbackHook(onStepEnd: c => { if (c.Step == 3) cancel.Cancel(); });   // stops after step 4 (1-based)
        var firstHalf = Trainer.Run(TrainerTestKit.Run(firstModel, FullFineTuning.TrainableParameters(firstModel), data, Make(), split.Path, stop), cancel.Token);
        firstHalf.Interrupted.Should().BeTrue();
        firstHalf.FinalStep.Should().Be(4);
        CheckpointStore.List(split.Path).Select(c => c.Step).Should().Equal(3, 4);

        var resumedModel = TinyModel(seed: 99);   // different initial weights: everything must come from the checkpoint
        var options = Make();
        options.Resume = "latest";
        var resumed = Trainer.Run(TrainerTestKit.Run(resumedModel, FullFineTuning.TrainableParameters(resumedModel), data, options, split.Path));
        resumed.StartStep.Should().Be(4);

        var expected = uninterrupted.Steps.Select(s => (s.Step, s.Loss, s.LearningRate, s.GradNorm)).ToList();
        firstHalf.Steps.Concat(resumed.Steps).Select(s => (s.Step, s.Loss, s.LearningRate, s.GradNorm)).Should().Equal(expected);
        resumed.Evaluations.Should().Equal(uninterrupted.Evaluations.Where(e => e.Step > 4));
        Snapshot(resumedModel).Should().BeEquivalentTo(Snapshot(uninterruptedModel), o => o.WithStrictOrdering());

        static List<(int, double)> Curve(string dir) => File.ReadLines(Path.Combine(dir, MetricsLog.FileName))
            .Select(l => JsonNode.Parse(l)!).Select(n => ((int)n["step"]!, (double)(n["loss"] ?? n["eval_loss"])!)).ToList();
        Curve(split.Path).Should().Equal(Curve(full.Path), "metrics.jsonl continues where the checkpoint stopped");
    }

    [Fact]
    public void Resume_checks_the_checkpoint_against_the_run()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var trainable = FullFineTuning.TrainableParameters(model);
        Trainer.Run(TrainerTestKit.Run(model, trainable, TinyData(), Options(o => { o.MaxSteps = 2; o.CheckpointEvery = 2; }), dir.Path));

        var other = TinyModel();
        var changed = Options(o => { o.MaxSteps = 4; o.BatchSize = 2; o.Resume = "latest"; });
        var act = () => Trainer.Run(TrainerTestKit.Run(other, FullFineTuning.TrainableParameters(other), TinyData(), changed, dir.Path));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'training:batch_size' has value '2'*made with 4*");

        var subset = Options(o => { o.MaxSteps = 4; o.Resume = CheckpointStore.PathOf(dir.Path, 2); });
        var wrongParameters = () => Trainer.Run(TrainerTestKit.Run(other, other.Train("lm_head.weight"), TinyData(), subset, dir.Path));
        wrongParameters.Should().Throw<PeftFormatException>().WithMessage("*trainable.safetensors*'embed_tokens.weight' is not a trainable parameter*");

        var fresh = () => Trainer.Run(TrainerTestKit.Run(other, FullFineTuning.TrainableParameters(other), TinyData(), Options(), dir.Path));
        fresh.Should().Throw<PeftConfigurationException>().WithMessage("*'output:dir'*already holds checkpoints*");

        using var empty = new TempDirectory();
        var none = () => Trainer.Run(TrainerTestKit.Run(other, FullFineTuning.TrainableParameters(other), TinyData(), Options(o => o.Resume = "latest"), empty.Path));
        none.Should().Throw<PeftConfigurationException>().WithMessage("*'training:resume' has value 'latest': there is no checkpoint*");
    }

    [Fact]
    public void A_non_finite_loss_stops_training_naming_the_step()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var poison = new CallbackHook(onStepStart: c =>
        {
            if (c.Step != 2) return;
            using var noGrad = torch.no_grad();
            model.Net.layers[0].down_proj.weight.fill_(float.NaN);
        });
        var act = () => Trainer.Run(TrainerTestKit.Run(model, model.Train("lm_head.weight"), TinyData(), Options(), dir.Path, poison));
        act.Should().Throw<TrainingException>().WithMessage("the loss is NaN at step 3*");
        File.Exists(Path.Combine(dir.Path, FullModelOutput.FileName)).Should().BeFalse("a failed run writes no result");
    }

    [Fact]
    public void Accumulated_micro_batches_are_weighted_by_their_tokens()
    {
        // Two examples with 3 and 9 counted tokens: one batch of both, or two micro-batches of one each, must give
        // the same step loss and the same gradient (norm), because both divide by the step's 12 tokens.
        var shortExample = new TokenizedExample([1, 5, 6, 7], [-100, 5, 6, 7]);
        var longExample = new TokenizedExample([1, 5, 6, 7, 8, 9, 10, 11, 12, 13], [-100, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        var data = TrainingDataSet.FromExamples([shortExample, longExample], null, 2, shuffle: false);
        StepRecord OneStep(int batch, int accumulation)
        {
            using var dir = new TempDirectory();
            var model = TinyModel();
            var o = Options(x => { x.MaxSteps = 1; x.BatchSize = batch; x.GradientAccumulationSteps = accumulation; x.MaxGradNorm = 0; });
            return Trainer.Run(TrainerTestKit.Run(model, FullFineTuning.TrainableParameters(model), data, o, dir.Path)).Steps[0];
        }
        var together = OneStep(2, 1);
        var accumulated = OneStep(1, 2);
        together.CountedTokens.Should().Be(12);
        accumulated.CountedTokens.Should().Be(12);
        accumulated.Loss.Should().BeApproximately(together.Loss, 1e-6);
        accumulated.GradNorm.Should().BeApproximately(together.GradNorm, 1e-5);

        // the loss itself: mean over counted tokens of −log p(label | prefix)
        var model = TinyModel();
        using var scope = torch.NewDisposeScope();
        var batch = BatchCollator.Collate([shortExample, longExample], 2);
        var (ids, labels) = batch.ToTensors(CPU);
        var logits = model.Logits(ids);
        double sum = CausalLmLoss.Sum(logits, labels).item<float>();
        var logProbs = logits.log_softmax(-1);
        double manual = 0;
        foreach (var (row, example) in new[] { (0, shortExample), (1, longExample) })
            for (int t = 1; t < example.Length; t++)
                manual -= logProbs[row, t - 1, example.Labels[t]].item<float>();
        sum.Should().BeApproximately(manual, 1e-4);
        (sum / 12).Should().BeApproximately(together.Loss, 1e-5);
    }

    [Fact]
    public void Frozen_weights_can_be_stored_in_bfloat16()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var trainable = model.Train("lm_head.weight");
        var result = Trainer.Run(TrainerTestKit.Run(model, trainable, TinyData(), Options(o => { o.MaxSteps = 15; o.BaseDtype = "bfloat16"; }), dir.Path));
        foreach (var (name, p) in model.NamedParameters())
            p.dtype.Should().Be(name == "lm_head.weight" ? ScalarType.Float32 : ScalarType.BFloat16, name);
        result.Steps[^1].Loss.Should().BeLessThan(result.Steps[0].Loss);
        long head = model.Net.lm_head.weight.numel();
        long frozen = model.NamedParameters().Sum(p => p.Parameter.numel()) - head;
        result.Summary.WeightBytes.Should().Be(head * 4 + frozen * 2);
    }

    [Fact]
    public void Training_options_bind_with_HF_defaults_and_name_bad_values()
    {
        var defaults = new TrainingOptions();
        (defaults.Seed, defaults.BatchSize, defaults.LearningRate, defaults.LrScheduler, defaults.MaxGradNorm, defaults.Epochs)
            .Should().Be((42, 8, 5e-5, "linear", 1.0, 3.0));
        IConfiguration Section(string key, string value) =>
            new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["training:" + key] = value }).Build().GetSection("training");
        var cases = new (string Key, string Value)[]
        {
            ("lr_scheduler", "step"), ("base_dtype", "float16"), ("batch_size", "0"), ("max_grad_norm", "-1"), ("adam_beta2", "1"), ("log_every", "0"),
        };
        foreach (var (key, value) in cases)
        {
            var act = () => Peft.Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(Section(key, value));
            act.Should().Throw<PeftConfigurationException>().WithMessage($"*'training:{key}' has value '{value}'*");
        }
        Peft.Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(Section("activation_checkpointing", "true")).ActivationCheckpointing.Should().BeTrue();
    }
}

public class CheckpointWritingTests
{
    sealed class FailingOutput(int failAtCheckpoint) : ITrainingOutput
    {
        int _checkpoints;
        public void WriteFinal(string directory) => File.WriteAllText(Path.Combine(directory, "result.txt"), "ok");
        public void WriteCheckpoint(string directory)
        {
            File.WriteAllText(Path.Combine(directory, "adapter.txt"), "partial");
            if (++_checkpoints == failAtCheckpoint) throw new IOException("disk full");
        }
    }

    [Fact]
    public void A_failed_checkpoint_leaves_no_folder_and_keeps_the_previous_ones()
    {
        using var dir = new TempDirectory();
        var model = TinyModel();
        var trainable = model.Train("lm_head.weight");
        var options = Options(o => { o.MaxSteps = 6; o.CheckpointEvery = 2; o.KeepLastCheckpoints = 1; });
        var run = TrainerTestKit.Run(model, trainable, TinyData(), options, dir.Path);
        var act = () => Trainer.Run(new TrainingRun
        {
            Model = run.Model, TrainableParameters = run.TrainableParameters, Optimizer = run.Optimizer, Data = run.Data,
            Options = run.Options, OutputDirectory = run.OutputDirectory, Output = new FailingOutput(failAtCheckpoint: 2), WriteLossCurve = false,
        });
        act.Should().Throw<IOException>().WithMessage("disk full");
        CheckpointStore.List(dir.Path).Select(c => c.Step).Should().Equal([2], "step-4 failed and step-2 is not pruned before a newer one is complete");
        Directory.GetFileSystemEntries(CheckpointStore.Root(dir.Path)).Should().ContainSingle("the temporary folder is removed");
        File.ReadAllText(Path.Combine(CheckpointStore.PathOf(dir.Path, 2), "adapter.txt")).Should().Be("partial", "the output's checkpoint files are part of the checkpoint");
        File.Exists(Path.Combine(dir.Path, "result.txt")).Should().BeFalse();
    }

    [Fact]
    public void Sequences_longer_than_the_model_allows_are_refused()
    {
        using var dir = new TempDirectory();
        var model = new TinyCausalLm(Tokenizer.VocabSize, maxPositions: 12);
        var data = TinyData(seqLen: 16);
        var act = () => Trainer.Run(TrainerTestKit.Run(model, model.Train("lm_head.weight"), data, Options(), dir.Path));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'data:seq_len' has value '*max_position_embeddings (12)*");
    }
}
