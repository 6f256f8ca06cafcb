using Peft.Abstractions;
using Peft.Host.Composition;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;

namespace Peft.Bench;

/// <summary>
/// One measurement in this (fresh) process: build the model, compose the variant exactly as <c>peft train</c>
/// does (plugins from this exe's <c>plugins/</c> folder, <see cref="PeftComposer"/>), run <see cref="Trainer.Run"/>
/// for warm-up + timed steps, time the timed ones from the trainer's own step reports, read the peak RSS and the peak of live native heap bytes
/// (<see cref="HeapPeakSampler"/>).
/// </summary>
public static class ChildRun
{
    public static Measurement Measure(Variant variant, BenchOptions o)
    {
        torch.set_num_threads(o.Threads);
        var outputDir = Path.Combine(Path.GetTempPath(), $"peft-bench-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            using var setup = ComposedWorkload.Create(variant, o, outputDir);
            var (options, model, composed) = (setup.Options, setup.Model, setup.Composed);
            int examples = o.BatchSize * Math.Max(4, o.WarmupSteps + o.Steps);
            var data = Workload.RandomTokens(examples, o.SeqLen, model.Config.VocabSize, o.Seed);

            using var parallel = variant.Ranks > 1 ? Peft.Host.Distributed.DistributedLaunch.FromEnvironment(new Peft.Host.Distributed.DistributedOptions())
                                                   : Peft.Host.Distributed.DataParallelism.Single;
            // distributed:zero = 1: each rank's AdamW over its half of the parameters (as peft train builds it)
            using var sharded = parallel.Enabled && variant.MethodSection.TryGetValue("distributed:zero", out var zero) && zero == "1"
                ? new Peft.Host.Distributed.ZeroShardedOptimizer(composed.TrainableParameters, parallel.Communicator,
                    shard => new Peft.Host.Optimization.AdamWOptimizer(shard, options.ToOptimizerSettings()))
                : null;
            Peft.Abstractions.Optimization.IPeftOptimizer optimizer = sharded ?? composed.Optimizer;
            var progress = new StepClock();
            long rssBefore = ProcessMemory.CurrentRssBytes();
            long? heapBefore = Peft.Host.Training.ProcessMemory.HeapInUse();
            using var heap = new HeapPeakSampler();
            // The model was prepared (base dtype, activation checkpointing) by the composer in ComposedWorkload.
            var result = Trainer.Run(new TrainingRun
            {
                Model = model,
                TrainableParameters = composed.TrainableParameters,
                Optimizer = optimizer,
                Hooks = composed.Hooks,
                Data = data,
                Options = options,
                OutputDirectory = outputDir,
                Output = new NoOutput(),
                Progress = progress,
                WriteLossCurve = false,
                Parallel = parallel,
            });
            long peak = ProcessMemory.PeakRssBytes();
            heap.Dispose();

            // Elapsed[i] = trainer clock at the end of step i+1. Timed window: end of the last warm-up step .. end of the last step.
            var ends = progress.StepEnds;
            if (ends.Count != o.WarmupSteps + o.Steps)
                throw new InvalidOperationException($"the trainer reported {ends.Count} steps, expected {o.WarmupSteps + o.Steps}");
            double window = ends[^1] - ends[o.WarmupSteps - 1];
            var stepSeconds = Enumerable.Range(o.WarmupSteps, o.Steps).Select(i => ends[i] - ends[i - 1]).Order().ToList();
            double median = stepSeconds.Count % 2 == 1
                ? stepSeconds[stepSeconds.Count / 2]
                : (stepSeconds[stepSeconds.Count / 2 - 1] + stepSeconds[stepSeconds.Count / 2]) / 2;
            var cpu = progress.StepCpuEnds;
            var stepCpu = Enumerable.Range(o.WarmupSteps, o.Steps).Select(i => cpu[i] - cpu[i - 1]).Order().ToList();
            double medianCpu = stepCpu.Count % 2 == 1 ? stepCpu[stepCpu.Count / 2] : (stepCpu[stepCpu.Count / 2 - 1] + stepCpu[stepCpu.Count / 2]) / 2;
            var s = result.Summary;
            return new Measurement
            {
                Variant = variant.Name,
                Threads = torch.get_num_threads(),
                BatchSize = o.BatchSize,
                SeqLen = o.SeqLen,
                WarmupSteps = o.WarmupSteps,
                TimedSteps = o.Steps,
                TimedSeconds = window,
                TokensPerSecond = (double)o.BatchSize * o.SeqLen * o.Steps / window,
                MedianStepSeconds = median,
                MedianStepCpuSeconds = Math.Round(medianCpu, 4),
                StepSeconds = ends.Select((end, i) => Math.Round(end - (i == 0 ? 0 : ends[i - 1]), 3)).ToList(),
                RssBeforeTrainingBytes = rssBefore,
                PeakRssBytes = peak,
                HeapBeforeTrainingBytes = heapBefore,
                PeakHeapBytes = heap.PeakBytes,
                TotalParameters = s.TotalParameters,
                TrainableParameters = s.TrainableParameters,
                WeightBytes = s.WeightBytes,
                GradientBytes = s.GradientBytes,
                OptimizerStateBytes = s.OptimizerStateBytes,
                FirstLoss = result.Steps[0].Loss,
                LastLoss = result.Steps[^1].Loss,
                StoredWeightBytes = StoredWeightBytes(model),
                Ranks = parallel.WorldSize,
                CommunicationShare = parallel.Enabled ? Math.Round(parallel.CommunicationSeconds / ends[^1], 4) : null,
                PeakGradientBytes = optimizer is Peft.Abstractions.Optimization.IBackwardStepOptimizer b ? b.PeakGradientBytes : null,
            };
        }
        finally
        {
            try { if (Directory.Exists(outputDir)) Directory.Delete(outputDir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Bytes the weights occupy as stored: float parameters (tied once) plus quantized linears' codes and scales.</summary>
    static long StoredWeightBytes(Peft.Host.Model.LlamaForCausalLM model)
    {
        var seen = new HashSet<IntPtr>();
        long bytes = model.NamedParameters().Where(p => seen.Add(p.Parameter.Handle)).Sum(p => p.Parameter.NumberOfElements * p.Parameter.ElementSize);
        return bytes + Peft.Abstractions.Quantization.QuantizedWeightBytes.Sum(model).Bytes;   // through adapters to their base
    }

    /// <summary>Records the trainer's clock and the process's CPU time at the end of every optimizer step; shows nothing.</summary>
    sealed class StepClock : ITrainingProgress, IProgressSink
    {
        readonly System.Diagnostics.Process _self = System.Diagnostics.Process.GetCurrentProcess();

        public List<double> StepEnds { get; } = new();
        public List<double> StepCpuEnds { get; } = new();

        public void Run(int startStep, int totalSteps, Action<IProgressSink> loop) => loop(this);

        public void OnStep(StepReport report)
        {
            StepEnds.Add(report.Elapsed.TotalSeconds);
            _self.Refresh();
            StepCpuEnds.Add(_self.TotalProcessorTime.TotalSeconds);
        }

        public void WriteLine(string message) { }
    }

    /// <summary>The bench keeps no result: writing 60 MB of full weights would only add disk time after the loop.</summary>
    sealed class NoOutput : ITrainingOutput
    {
        public void WriteFinal(string directory) { }
    }
}
