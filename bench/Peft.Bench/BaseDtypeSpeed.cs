using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using Microsoft.Extensions.Configuration;
using Peft.Host.Composition;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Bench;

/// <summary>
/// <c>--base-dtype-speed</c>: what <c>training:base_dtype = "bfloat16"</c> costs and saves for LoRA on a model with
/// Llama 3's vocabulary (the <see cref="VocabScaling.Shape"/> body: d 256, 2 layers, vocab 128,256, untied head;
/// LoRA r 16 on q/v/down_proj, batch 1 × 256, chunked loss). The weights are rounded to bf16 values first (a bf16
/// folder), so both variants hold the same values and give the same losses; the frozen base is then stored in fp32
/// or bf16. bf16 storage up-casts each frozen layer per forward and again per backward (one layer at a time) and reads
/// the head in 16 MiB blocks. Each variant runs in its own child, alternating, <c>--rounds</c> times; a child times
/// <c>--warmup-steps</c> + <c>--steps</c> steps and reports the median of the timed ones.
/// </summary>
public static class BaseDtypeSpeed
{
    public const int Seq = 256;

    public static Measurement MeasureChild(int seqLen, int chunk, string baseDtype, BenchOptions o)
    {
        torch.set_num_threads(o.Threads);
        var outputDir = Path.Combine(Path.GetTempPath(), $"peft-basedtype-{Environment.ProcessId}-{Guid.NewGuid():N}");
        int steps = o.WarmupSteps + o.Steps;
        var root = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["method:name"] = "lora", ["method:r"] = "16", ["method:lora_alpha"] = "32", ["method:lora_dropout"] = "0",
            ["method:target_modules:0"] = "q_proj", ["method:target_modules:1"] = "v_proj", ["method:target_modules:2"] = "down_proj",
            ["training:batch_size"] = "1", ["training:max_steps"] = steps.ToString(CultureInfo.InvariantCulture), ["training:checkpoint_every"] = "0",
            ["training:loss_chunk_tokens"] = chunk.ToString(CultureInfo.InvariantCulture), ["training:base_dtype"] = baseDtype,
            ["training:log_every"] = "1", ["output:dir"] = outputDir,
        }).Build();
        try
        {
            var options = Peft.Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingConfiguration.TrainingSection));
            using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, root);
            torch.manual_seed(o.Seed);
            using var model = new LlamaForCausalLM(VocabScaling.Shape());
            using (torch.no_grad())
                foreach (var (_, p) in model.NamedParameters()) p.copy_(p.to(ScalarType.BFloat16));   // a bf16 folder's values
            var composed = PeftComposer.Compose(catalog, model, root, options.ToOptimizerSettings());
            using var optimizer = composed.Optimizer;
            var data = Workload.RandomTokens(1, seqLen, VocabScaling.Vocab, o.Seed);
            long before = ProcessMemory.CurrentRssBytes();
            var progress = new TimingProgress();
            var clock = Stopwatch.StartNew();
            var result = Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = optimizer, Hooks = composed.Hooks,
                Data = data, Options = options, OutputDirectory = outputDir, Output = new NoOutput(),
                Progress = progress, WriteLossCurve = false,
            });
            double seconds = clock.Elapsed.TotalSeconds;
            var timed = progress.StepSeconds.Skip(o.WarmupSteps).Order().ToList();
            double median = timed.Count == 0 ? double.NaN : timed[timed.Count / 2];
            return new Measurement
            {
                Variant = $"base-{baseDtype}", Threads = torch.get_num_threads(), BatchSize = 1, SeqLen = seqLen,
                WarmupSteps = o.WarmupSteps, TimedSteps = timed.Count, TimedSeconds = timed.Sum(), TokensPerSecond = seqLen / median,
                MedianStepSeconds = median, RssBeforeTrainingBytes = before, PeakRssBytes = ProcessMemory.PeakRssBytes(),
                TotalParameters = result.Summary.TotalParameters, TrainableParameters = result.Summary.TrainableParameters,
                FirstLoss = result.Steps[0].Loss, LastLoss = result.Steps[^1].Loss,
            };
        }
        finally
        {
            try { if (Directory.Exists(outputDir)) Directory.Delete(outputDir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Parent: fp32 and bf16 children alternating for --rounds; medians and the bf16/fp32 ratios.</summary>
    public static int Run(BenchOptions o, string[] args)
    {
        var runs = new Dictionary<string, List<Measurement>> { ["float32"] = [], ["bfloat16"] = [] };
        for (int round = 0; round < o.Rounds; round++)
            foreach (var dtype in round % 2 == 0 ? new[] { "float32", "bfloat16" } : ["bfloat16", "float32"])
            {
                var m = Child(o, dtype);
                if (m is null) return 1;
                runs[dtype].Add(m);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"round {round + 1} {dtype,-8}: median step {m.MedianStepSeconds:0.000} s, peak {Mib(m.PeakRssBytes)}, held before training {Mib(m.RssBeforeTrainingBytes)}, loss {m.FirstLoss:0.00000} -> {m.LastLoss:0.00000}"));
            }
        double Median(IEnumerable<double> xs) { var l = xs.Order().ToList(); return l[l.Count / 2]; }
        double t32 = Median(runs["float32"].Select(m => m.MedianStepSeconds)), t16 = Median(runs["bfloat16"].Select(m => m.MedianStepSeconds));
        double p32 = Median(runs["float32"].Select(m => (double)m.PeakRssBytes)), p16 = Median(runs["bfloat16"].Select(m => (double)m.PeakRssBytes));
        double h32 = Median(runs["float32"].Select(m => (double)m.RssBeforeTrainingBytes)), h16 = Median(runs["bfloat16"].Select(m => (double)m.RssBeforeTrainingBytes));
        var sb = new StringBuilder();
        sb.AppendLine("| frozen base | median step (s) | tokens/s | RSS before training | peak RSS | first → last loss |");
        sb.AppendLine("|---|---:|---:|---:|---:|---|");
        foreach (var (name, t, h, p) in new[] { ("float32", t32, h32, p32), ("bfloat16", t16, h16, p16) })
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {t:0.000} | {Seq / t:0} | {Mib((long)h)} | {Mib((long)p)} | {runs[name][0].FirstLoss:0.00000} → {runs[name][0].LastLoss:0.00000} |"));
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"\nbf16 / fp32: step time {t16 / t32:0.00}×, peak RSS {p16 / p32:0.00}× (medians of {o.Rounds} alternating rounds, {o.Steps} timed steps each, {o.Threads} threads)"));
        Console.WriteLine();
        Console.Write(sb);
        if (o.Out is { } outPath)
        {
            var command = "dotnet run --project bench/Peft.Bench -c Release -- " + string.Join(' ', args);
            AtomicFile.WriteText(outPath, $"# Frozen base in fp32 vs bf16 (vocab 128,256)\n\n```\n{command}\n```\n\n{sb}");
            Console.WriteLine($"wrote {outPath}");
        }
        return 0;
    }

    static string Mib(long bytes) => (bytes / 1048576.0).ToString("0", CultureInfo.InvariantCulture) + " MiB";

    static Measurement? Child(BenchOptions o, string dtype)
    {
        var run = SelfProcess.Run(
        [
            "--vocab-child", $"{Seq},{CausalLmLoss.DefaultChunkTokens}", "--base-dtype-child", dtype,
            "--threads", o.Threads.ToString(CultureInfo.InvariantCulture), "--seed", o.Seed.ToString(CultureInfo.InvariantCulture),
            "--warmup-steps", o.WarmupSteps.ToString(CultureInfo.InvariantCulture), "--steps", o.Steps.ToString(CultureInfo.InvariantCulture),
        ]);
        if (!run.Succeeded) Console.Error.WriteLine($"Peft.Bench: base-dtype child {dtype} failed (exit {run.ExitCode}):\n{run.Stderr}");
        return run.Succeeded ? run.Measurement : null;
    }

    sealed class NoOutput : ITrainingOutput { public void WriteFinal(string directory) { } }

    /// <summary>Wall time between consecutive step reports (the first from the start of the loop).</summary>
    sealed class TimingProgress : ITrainingProgress, IProgressSink
    {
        readonly Stopwatch _clock = new();
        double _last;
        public List<double> StepSeconds { get; } = [];
        public void Run(int startStep, int totalSteps, Action<IProgressSink> loop) { _clock.Start(); loop(this); }
        public void OnStep(StepReport report)
        {
            double now = _clock.Elapsed.TotalSeconds;
            StepSeconds.Add(now - _last);
            _last = now;
        }
        public void WriteLine(string message) { }
    }
}
