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

namespace Peft.Bench;

/// <summary>
/// <c>--vocab-scaling</c>: peak memory of one LoRA training step with Llama-3's vocabulary (128,256) on a small body,
/// at sequence lengths 256 … 2048, with the chunked loss and with the full logits, each in a fresh child process.
/// What training adds on top of the loaded model is dominated by the (T × V) logits, their log-softmax and their
/// gradient on the plain path; the chunked loss keeps only a (chunk × V) block of them at a time.
/// </summary>
public static class VocabScaling
{
    public const int Vocab = 128_256;
    public static readonly int[] SeqLens = [256, 512, 1024, 2048];
    public const int ChunkTokens = CausalLmLoss.DefaultChunkTokens;

    /// <summary>Llama-3's vocabulary on a small body: dim 256, 2 layers, 4 heads, hidden 768, untied head, 2048 positions.</summary>
    public static LlamaConfig Shape() => new()
    {
        HiddenSize = 256, IntermediateSize = 768, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 4,
        VocabSize = Vocab, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5, TieWordEmbeddings = false,
    };

    /// <summary>Child: one LoRA step (batch 1 × <paramref name="seqLen"/>) with training:loss_chunk_tokens = <paramref name="chunk"/>.</summary>
    public static Measurement MeasureChild(int seqLen, int chunk, BenchOptions o)
    {
        torch.set_num_threads(o.Threads);
        var outputDir = Path.Combine(Path.GetTempPath(), $"peft-vocab-{Environment.ProcessId}-{Guid.NewGuid():N}");
        var root = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["method:name"] = "lora", ["method:r"] = "16", ["method:lora_alpha"] = "32", ["method:lora_dropout"] = "0",
            ["method:target_modules:0"] = "q_proj", ["method:target_modules:1"] = "v_proj",
            ["training:batch_size"] = "1", ["training:max_steps"] = "1", ["training:checkpoint_every"] = "0",
            ["training:loss_chunk_tokens"] = chunk.ToString(CultureInfo.InvariantCulture), ["output:dir"] = outputDir,
        }).Build();
        try
        {
            var options = Peft.Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingConfiguration.TrainingSection));
            using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, root);
            torch.manual_seed(o.Seed);
            using var model = new LlamaForCausalLM(Shape());
            var composed = PeftComposer.Compose(catalog, model, root, options.ToOptimizerSettings());
            using var optimizer = composed.Optimizer;
            var data = Workload.RandomTokens(1, seqLen, Vocab, o.Seed);
            long before = ProcessMemory.CurrentRssBytes();
            var clock = Stopwatch.StartNew();
            var result = Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = optimizer, Hooks = composed.Hooks,
                Data = data, Options = options, OutputDirectory = outputDir, Output = new NoOutput(),
                Progress = new SilentProgress(), WriteLossCurve = false,
            });
            double seconds = clock.Elapsed.TotalSeconds;
            return new Measurement
            {
                Variant = $"vocab-{seqLen}-{chunk}", Threads = torch.get_num_threads(), BatchSize = 1, SeqLen = seqLen,
                WarmupSteps = 0, TimedSteps = 1, TimedSeconds = seconds, TokensPerSecond = seqLen / seconds, MedianStepSeconds = seconds,
                RssBeforeTrainingBytes = before, PeakRssBytes = ProcessMemory.PeakRssBytes(),
                TotalParameters = result.Summary.TotalParameters, TrainableParameters = result.Summary.TrainableParameters,
                FirstLoss = result.Steps[0].Loss, LastLoss = result.Steps[^1].Loss,
            };
        }
        finally
        {
            try { if (Directory.Exists(outputDir)) Directory.Delete(outputDir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Parent: every (seq, chunked/plain) pair in a fresh child, alternating; a markdown table and a PNG next to --out.</summary>
    public static int Run(BenchOptions o, string[] args)
    {
        var rows = new List<(int Seq, Measurement Chunked, Measurement Plain)>();
        foreach (var seq in SeqLens)
        {
            var chunked = Child(o, seq, ChunkTokens);
            var plain = Child(o, seq, 0);
            if (chunked is null || plain is null) return 1;
            rows.Add((seq, chunked, plain));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"seq {seq,5}: chunked peak {Mib(chunked.PeakRssBytes)} (+{Mib(Growth(chunked))})  plain peak {Mib(plain.PeakRssBytes)} (+{Mib(Growth(plain))})  loss {chunked.FirstLoss:0.0000} / {plain.FirstLoss:0.0000}"));
        }
        var sb = new StringBuilder();
        sb.AppendLine($"| seq len | peak RSS, chunked ({ChunkTokens} tokens) | peak RSS, full logits | added by training, chunked | added by training, full logits | full logits / chunked (added) | loss chunked / full |");
        sb.AppendLine("|---:|---:|---:|---:|---:|---:|---|");
        foreach (var (seq, c, p) in rows)
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {seq} | {Mib(c.PeakRssBytes)} | {Mib(p.PeakRssBytes)} | {Mib(Growth(c))} | {Mib(Growth(p))} | {(double)Growth(p) / Growth(c):0.0}× | {c.FirstLoss:0.00000} / {p.FirstLoss:0.00000} |"));
        Console.WriteLine();
        Console.Write(sb);
        if (o.Out is { } outPath)
        {
            var png = Path.ChangeExtension(outPath, ".png");
            LossCurvePlot.WriteSeries(png, $"LoRA step, vocab {Vocab:N0}, batch 1: memory added by training", "sequence length (tokens)", "peak RSS − RSS before training (MiB)",
            [
                ($"chunked loss ({ChunkTokens} tokens)", rows.Select(r => ((double)r.Seq, Growth(r.Chunked) / 1048576.0)).ToList()),
                ("full logits", rows.Select(r => ((double)r.Seq, Growth(r.Plain) / 1048576.0)).ToList()),
            ]);
            var command = "dotnet run --project bench/Peft.Bench -c Release -- " + string.Join(' ', args);
            AtomicFile.WriteText(outPath, $"# Vocabulary scaling\n\n```\n{command}\n```\n\n{sb}\n![memory added by training]({Path.GetFileName(png)})\n");
            Console.WriteLine($"wrote {outPath} and {png}");
        }
        return 0;
    }

    static long Growth(Measurement m) => m.PeakRssBytes - m.RssBeforeTrainingBytes;
    static string Mib(long bytes) => (bytes / 1048576.0).ToString("0", CultureInfo.InvariantCulture) + " MiB";

    static Measurement? Child(BenchOptions o, int seq, int chunk)
    {
        var run = SelfProcess.Run(["--vocab-child", $"{seq},{chunk}", "--threads", o.Threads.ToString(CultureInfo.InvariantCulture), "--seed", o.Seed.ToString(CultureInfo.InvariantCulture)]);
        if (!run.Succeeded) Console.Error.WriteLine($"Peft.Bench: vocab child seq {seq} chunk {chunk} failed (exit {run.ExitCode}):\n{run.Stderr}");
        return run.Succeeded ? run.Measurement : null;
    }

    sealed class NoOutput : ITrainingOutput { public void WriteFinal(string directory) { } }

    sealed class SilentProgress : ITrainingProgress, IProgressSink
    {
        public void Run(int startStep, int totalSteps, Action<IProgressSink> loop) => loop(this);
        public void OnStep(StepReport report) { }
        public void WriteLine(string message) { }
    }
}
