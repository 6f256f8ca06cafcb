using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json;
using Peft.Bench;
using Peft.Host.Formats;
using TorchSharp;

// Peft.Bench: LoRA vs full fine-tuning, tokens/s and peak memory, each run in a fresh child process.
// Exit codes: 0 ok, 1 a run failed, 2 bad flags.
BenchOptions options;
try
{
    options = BenchOptions.Parse(args);
}
catch (BenchUsageException e)
{
    Console.Error.WriteLine($"Peft.Bench: {e.Message}");
    Console.Error.WriteLine("run with --help for the flags");
    return BenchOptions.ExitUsage;
}
if (options.Help)
{
    Console.WriteLine(BenchOptions.UsageText);
    return 0;
}

if (options.Dequant) return DequantThroughput.Run(options);
if (options.VocabChild is { } vocabChild)
{
    try
    {
        Console.WriteLine((options.BaseDtypeChild is { } baseDtype
            ? Peft.Bench.BaseDtypeSpeed.MeasureChild(vocabChild.Seq, vocabChild.Chunk, baseDtype, options)
            : VocabScaling.MeasureChild(vocabChild.Seq, vocabChild.Chunk, options)).ToLine());
        return 0;
    }
    catch (Exception e)
    {
        Console.Error.WriteLine($"Peft.Bench --vocab-child: {e}");
        return 1;
    }
}
if (options.VocabScaling) return VocabScaling.Run(options, args);
if (options.BaseDtypeSpeed) return Peft.Bench.BaseDtypeSpeed.Run(options, args);

if (options.One is { } one)
{
    // child: one measurement, one JSON line on stdout
    try
    {
        var m = one.HandWritten ? (options.Breakdown ? new Measurement { Variant = one.Name, Skipped = "no breakdown of the hand-written step" } : PlainStep.Measure(one, options))
            : options.Breakdown ? PhaseBreakdown.Measure(one, options) : ChildRun.Measure(one, options);
        if (Environment.GetEnvironmentVariable(Peft.Host.Distributed.DistributedLaunch.RankVariable) is null or "0")   // one line per job: rank 0's
            Console.WriteLine(m.ToLine());
        return 0;
    }
    catch (Exception e)
    {
        Console.Error.WriteLine($"Peft.Bench --one {one.Name}: {e}");
        return 1;
    }
}

return Parent.Run(options, args);

static class Parent
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(BenchOptions o, string[] args)
    {
        string outPath = o.Out is null ? "" : Path.GetFullPath(o.Out);
        if (o.Out is not null && !Directory.Exists(Path.GetDirectoryName(outPath)))
        {
            Console.Error.WriteLine($"Peft.Bench: --out has value '{o.Out}': its folder does not exist");
            return BenchOptions.ExitUsage;
        }

        var machine = Machine(o);
        string loadBefore = LoadAverage();
        var wall = Stopwatch.StartNew();
        Console.WriteLine($"Peft.Bench: {o.Rounds} round(s) of {string.Join(", ", o.Variants.Select(v => v.Name))}; " +
                          $"batch {o.BatchSize} x {o.SeqLen} tokens, {o.WarmupSteps} warm-up + {o.Steps} timed steps; torch.set_num_threads({o.Threads})");
        foreach (var line in machine) Console.WriteLine($"  {line}");

        var runs = new List<Measurement>();
        var breakdowns = new List<Measurement>();
        var active = o.Variants.ToList();
        for (int round = 1; round <= o.Rounds; round++)
        {
            foreach (var variant in active.ToList())
            {
                var (measurement, error) = RunChild(o, variant);
                if (measurement is null)
                {
                    Console.Error.WriteLine($"Peft.Bench: round {round}, variant {variant.Name} failed:\n{error}");
                    return 1;
                }
                runs.Add(measurement);
                if (measurement.Skipped is not null)
                {
                    Console.WriteLine($"round {round}/{o.Rounds} {variant.Name,-8} skipped: {measurement.Skipped}");
                    active.Remove(variant); // it cannot run in later rounds either
                    continue;
                }
                Console.WriteLine(string.Create(Inv,
                    $"round {round}/{o.Rounds} {variant.Name,-8} {measurement.TokensPerSecond,8:0} tok/s  median step {measurement.MedianStepSeconds:0.000} s{(measurement.MedianStepCpuSeconds is { } c ? $" (cpu {c:0.000} s)" : "")}  " +
                    $"peak RSS {measurement.PeakRssBytes / 1048576.0:0} MiB (before training {measurement.RssBeforeTrainingBytes / 1048576.0:0} MiB)  " +
                    $"loss {measurement.FirstLoss:0.000} -> {measurement.LastLoss:0.000}"));
            }
            if (!o.Breakdown) continue;
            // the diagnostic children, alternating too, once per round
            foreach (var variant in active.Where(v => !v.ActivationCheckpointing && !v.HandWritten))
            {
                var (measurement, error) = RunChild(o, variant, breakdown: true);
                if (measurement is null)
                {
                    Console.Error.WriteLine($"Peft.Bench: round {round}, breakdown of {variant.Name} failed:\n{error}");
                    return 1;
                }
                breakdowns.Add(measurement);
                Console.WriteLine($"round {round}/{o.Rounds} breakdown {variant.Name,-8} " +
                                  string.Join("  ", measurement.PhaseMedianSeconds!.Select(p => string.Create(Inv, $"{p.Key} {p.Value:0.000} s"))));
            }
        }
        wall.Stop();
        string loadAfter = LoadAverage();

        var report = new Report(o, o.Variants, runs, breakdowns);
        Console.WriteLine();
        Console.Write(report.Table());
        Console.WriteLine($"runs: {report.RunsJson()}");
        if (o.Out is not null)
        {
            var command = "dotnet run --project bench/Peft.Bench -c Release -- " + string.Join(' ', args.Select(Quote));
            AtomicFile.WriteText(outPath, report.Markdown(command, machine, loadBefore, loadAfter, wall.Elapsed));
            Console.WriteLine($"wrote {o.Out}");
        }
        return 0;
    }

    /// <summary>Run this exe again with <c>--one VARIANT</c>; returns its measurement, or the reason it has none.</summary>
    static (Measurement?, string) RunChild(BenchOptions o, Variant variant, bool breakdown = false)
    {
        var childArgs = o.ChildArguments(variant, breakdown).ToList();
        if (variant.Ranks > 1)
        {
            // data parallel: MPICH's mpiexec starts the ranks; each gets threads/ranks LibTorch threads (same cores in all)
            int t = childArgs.IndexOf("--threads") + 1;
            childArgs[t] = Math.Max(1, o.Threads / variant.Ranks).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        var run = SelfProcess.Run(childArgs, variant.Ranks);
        return run.Succeeded ? (run.Measurement, "") : (null, $"exit code {run.ExitCode}\n{run.Stdout}\n{run.Stderr}");
    }

    static string Quote(string a) => a.Length > 0 && a.All(c => char.IsLetterOrDigit(c) || "-_./,:=".Contains(c)) ? a : $"'{a.Replace("'", "'\\''")}'";

    static string LoadAverage()
    {
        try
        {
            var parts = File.ReadAllText("/proc/loadavg").Split(' ');
            return $"{parts[0]}, {parts[1]}, {parts[2]}";
        }
        catch (IOException) { return "unknown"; }
    }

    static IReadOnlyList<string> Machine(BenchOptions o)
    {
        string cpu = "unknown CPU";
        try
        {
            cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? cpu;
        }
        catch (IOException) { }
        var torchSharp = typeof(torch).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
                         ?? typeof(torch).Assembly.GetName().Version?.ToString() ?? "?";
        return
        [
            $"{Environment.ProcessorCount} logical cores visible to .NET, {cpu}; CPU only (no GPU)",
            $"{RuntimeInformation.OSDescription}, .NET {Environment.Version}",
            $"TorchSharp-cpu {torchSharp}, LibTorch {LibTorchVersion()}; torch.set_num_threads({o.Threads}) in every child",
            $"date (UTC): {DateTime.UtcNow:yyyy-MM-dd HH:mm}",
        ];
    }

    /// <summary>The libtorch-cpu package this exe was built against, from its deps.json.</summary>
    static string LibTorchVersion()
    {
        try
        {
            var deps = Path.Combine(AppContext.BaseDirectory, "Peft.Bench.deps.json");
            using var doc = JsonDocument.Parse(File.ReadAllText(deps));
            foreach (var lib in doc.RootElement.GetProperty("libraries").EnumerateObject())
                if (lib.Name.StartsWith("libtorch-cpu", StringComparison.OrdinalIgnoreCase))
                    return lib.Name.Split('/')[1];
        }
        catch (Exception e) when (e is IOException or JsonException or KeyNotFoundException) { }
        return "unknown";
    }
}
