using System.Diagnostics;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Optimization;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;

namespace Peft.Bench;

/// <summary>
/// Diagnostic (<c>--breakdown</c>): where a step's time goes. Runs the trainer's step by hand (the same calls
/// <see cref="Trainer"/> makes for one micro-batch: hidden states (or logits), CausalLmLoss.Sum / N, backward, global-norm clipping,
/// optimizer step, zero grad) with a clock around each phase. Not the headline number: that one comes from
/// <see cref="Trainer.Run"/> itself.
/// </summary>
public static class PhaseBreakdown
{
    public static readonly string[] Phases = ["batch", "forward", "loss", "backward", "free", "clip", "optimizer"];

    public static Measurement Measure(Variant variant, BenchOptions o)
    {
        if (variant.ActivationCheckpointing)
            return new Measurement { Variant = variant.Name, Skipped = "the breakdown runs without activation checkpointing" };
        torch.set_num_threads(o.Threads);
        using var setup = ComposedWorkload.Create(variant, o, Path.GetTempPath());
        var (options, model, composed, optimizer) = (setup.Options, setup.Model, setup.Composed, setup.Composed.Optimizer);
        var data = Workload.RandomTokens(o.BatchSize * (o.WarmupSteps + o.Steps), o.SeqLen, model.Config.VocabSize, o.Seed);
        var trainable = composed.TrainableParameters.Select(p => p.Parameter).ToList();

        var times = Phases.ToDictionary(p => p, _ => new List<double>());
        model.Module.train();
        optimizer.ZeroGrad();
        for (int step = 0; step < o.WarmupSteps + o.Steps; step++)
        {
            var clock = Stopwatch.StartNew();
            var batch = BatchCollator.Collate(data.Train.Skip(step * o.BatchSize).Take(o.BatchSize).ToList(), data.PadId);
            double Lap() { double s = clock.Elapsed.TotalSeconds; clock.Restart(); return s; }
            var lap = new Dictionary<string, double>();
            using (var scope = torch.NewDisposeScope())
            {
                var (ids, labels) = batch.ToTensors(model.Device);
                lap["batch"] = Lap();
                // forward = the body (embedding, layers, norm); loss = the head and cross entropy, which with the
                // chunked loss (the trainer's default) also computes the head's gradients chunk by chunk.
                bool chunked = options.LossChunkTokens > 0;
                var hidden = chunked ? model.HiddenStates(ids) : model.Logits(ids);
                lap["forward"] = Lap();
                var sum = chunked ? CausalLmLoss.Sum(hidden, model.OutputHead, labels, options.LossChunkTokens) : CausalLmLoss.Sum(hidden, labels);
                var scaled = sum / batch.CountedTokens;
                _ = scaled.item<float>();
                lap["loss"] = Lap();
                scaled.backward();
                lap["backward"] = Lap();
            }
            lap["free"] = Lap();   // the step's graph and activations, freed with the scope
            GradientClipping.ClipByGlobalNorm(trainable, options.MaxGradNorm);
            lap["clip"] = Lap();
            optimizer.Step(options.LearningRate);
            optimizer.ZeroGrad();
            lap["optimizer"] = Lap();
            if (step >= o.WarmupSteps)
                foreach (var (phase, s) in lap) times[phase].Add(s);
        }
        return new Measurement
        {
            Variant = variant.Name,
            Threads = torch.get_num_threads(),
            BatchSize = o.BatchSize,
            SeqLen = o.SeqLen,
            WarmupSteps = o.WarmupSteps,
            TimedSteps = o.Steps,
            PhaseMedianSeconds = times.ToDictionary(t => t.Key, t => Math.Round(Report.Median(t.Value), 4)),
        };
    }
}
