using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Host.Cli;
using Peft.Host.Comparison;
using Peft.Host.Composition;
using Peft.Host.Configuration;
using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;

namespace Peft.Host.Commands;

/// <summary>
/// <c>peft compare --config BASE.json --methods full,lora,... [--steps N] [--out DIR]</c>: every method trained from the
/// same base configuration (model, data, seed, batch, steps) by its own <c>peft train</c> child process, then one
/// table (<see cref="ComparisonTable"/>) and one plot of every method's held-out loss. What each method means is
/// data: <see cref="MethodOverlays"/> (its examples/&lt;name&gt;.json).
/// </summary>
public sealed class CompareCommand : ICliCommand
{
    public static readonly IReadOnlyList<string> DefaultMethods = ["full", "lora", "dora", "qlora", "qlora_dora", "galore", "galore_int8", "lisa", "lisa_lora"];

    /// <summary>What <c>peft compare</c> writes in its folder (and may replace on a rerun).</summary>
    public static readonly IReadOnlySet<string> OwnEntries = new HashSet<string>(StringComparer.Ordinal)
    {
        ComparisonTable.MarkdownFile, ComparisonTable.JsonFile, ComparisonTable.PlotFile, "runs", "configs", "logs",
    };

    public string Name => "compare";
    public string Summary => "train several methods from one base configuration and tabulate quality, speed and memory";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite" };

    public string Help =>
        "usage: peft compare --config BASE.json [--methods full,lora,...] [--steps N] [--out DIR]\n" +
        "                    [--lora-ranks 1,4,...] [--lisa-k 1,2,...] [--examples DIR] [--set SECTION:KEY=VALUE]...\n" +
        "                    [--plugins DIR]... [--overwrite]\n\n" +
        "Trains each method with 'peft train' in its own process, from the same base configuration: model, data,\n" +
        "seed, batch size, sequence length, steps and evaluation come from BASE.json; a method's sections\n" +
        "(quantization, method, optimizer, hooks) and its tuned training keys (learning_rate, max_grad_norm) come from\n" +
        "examples/<name>.json ('lora' reads quickstart.json; 'full' reads full.json or is method:name=full).\n" +
        "Full fine-tuning is always run (first): it is the reference of the relative columns.\n\n" +
        "options:\n" +
        $"  --methods LIST             comma-separated (default {string.Join(",", DefaultMethods)})\n" +
        "  --steps N                  training:max_steps of every run (default: the base's)\n" +
        "  --out DIR                  result folder (default out/compare): compare.md, compare.json,\n" +
        "                             held_out_loss.png, runs/<method>/ (each run's own folder), configs/, logs/\n" +
        "  --lora-ranks LIST          add LoRA at each rank (rows lora_r<r>; lora_alpha keeps the example's alpha/r)\n" +
        "  --lisa-k LIST              add LISA with k active layers (rows lisa_k<k>)\n" +
        "  --examples DIR             where the methods' example configurations are (default examples)\n" +
        "  --set SECTION:KEY=VALUE    passed to every run (wins over the base and the method's example)\n" +
        HostConfiguration.PluginsHelp + "\n" +
        "  --overwrite                replace an --out folder that holds files peft compare did not write\n\n" +
        "Exit code 0 when every method trained, 1 when one failed or is missing (the table says which and why).\n\n" +
        "example:\n" +
        "  peft compare --config examples/quickstart.json --methods full,lora,dora --steps 60 --out out/compare";

    public int Run(CommandArgs args, CliContext context)
    {
        var configPath = args.Required("--config");
        var methodList = args.Optional("--methods");
        int? steps = args.Optional("--steps") is null ? null : args.Int("--steps", 0, 1, 10_000_000);
        var outDir = args.Optional("--out") ?? Path.Combine("out", "compare");
        var loraRanks = IntList(args.Optional("--lora-ranks"), "--lora-ranks");
        var lisaK = IntList(args.Optional("--lisa-k"), "--lisa-k");
        var examplesDir = args.Optional("--examples") ?? "examples";
        var sets = args.Many(HostConfiguration.SetOption);
        var pluginDirs = args.Many(HostConfiguration.PluginsOption);
        var overwrite = args.Flag("--overwrite");
        args.ThrowOnUnused();

        var methods = new List<string>();
        foreach (var m in (methodList ?? string.Join(",", DefaultMethods)).Split(',', StringSplitOptions.TrimEntries))
        {
            if (m.Length == 0 || m.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.')))
                throw new CliException($"option '--methods': '{m}' is not a method name (letters, digits, '_', '-', '.')");
            if (methods.Contains(m)) throw new CliException($"option '--methods': '{m}' is listed twice");
            methods.Add(m);
        }
        methods.Remove(FullFineTuning.Name);
        methods.Insert(0, FullFineTuning.Name);
        foreach (var r in loraRanks) if (!methods.Contains($"lora_r{r}")) methods.Add($"lora_r{r}");
        foreach (var k in lisaK) if (!methods.Contains($"lisa_k{k}")) methods.Add($"lisa_k{k}");
        if (!Directory.Exists(examplesDir)) throw new CliException($"option '--examples': '{examplesDir}' is not a folder");

        // the base configuration must be valid on its own (bad keys are named before anything runs)
        var root = HostConfiguration.Load(configPath, sets, pluginDirectories: pluginDirs);
        var baseConfig = MethodOverlays.ReadConfig(configPath, "--config");
        var modelOptions = ModelOptions.From(root);
        var cfg = TrainingConfiguration.Bind(root);

        OutputFolderGuard.RefuseInputOverlap(Name, "--out", outDir, ("--config", configPath), ("--examples", examplesDir), ("model:path", modelOptions.Path), ("data:path", cfg.Data.Path));
        OutputFolderGuard.RefuseForeignContent(Name, "--out", outDir, overwrite, e => OwnEntries.Contains(e.Name),
            string.Join(", ", OwnEntries.Order(StringComparer.Ordinal)));

        using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, root);
        var overlays = new MethodOverlays(examplesDir);
        var (exe, prefix) = HostExecutable(context.BaseDirectory);
        var finalOut = Path.GetFullPath(outDir);
        int exitCode = 0;

        AtomicFile.WriteDirectory(finalOut, tmp =>
        {
            Directory.CreateDirectory(Path.Combine(tmp, "configs"));
            Directory.CreateDirectory(Path.Combine(tmp, "logs"));
            var rows = new List<ComparisonRow>();
            for (int i = 0; i < methods.Count; i++)
            {
                var name = methods[i];
                var tag = $"[{i + 1}/{methods.Count}] {name}";
                var overlay = overlays.Find(name, out var problem);
                if (overlay is null)
                {
                    rows.Add(new ComparisonRow { Method = name, Status = "missing", Note = problem });
                    context.Out.WriteLine($"{tag}: missing: {problem}");
                    continue;
                }
                var runDir = Path.Combine(tmp, "runs", name);
                var childConfig = Path.Combine(tmp, "configs", name + ".json");
                File.WriteAllText(childConfig, MethodOverlays.Compose(baseConfig, overlay, steps, Path.Combine(finalOut, "runs", name)).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                // the run writes into the temporary folder; the saved config names where it will end up
                var runConfig = MethodOverlays.Compose(baseConfig, overlay, steps, runDir);
                var runConfigPath = Path.Combine(tmp, "logs", name + ".config.json");
                File.WriteAllText(runConfigPath, runConfig.ToJsonString());

                // a method whose plugin is not loaded is reported before a process is started for it
                try { PeftComposer.Plan(catalog, HostConfiguration.Load(runConfigPath, sets, pluginDirectories: pluginDirs)); }
                catch (Exception e) when (e is PeftConfigurationException or PluginLoadException or CliException)
                {
                    File.Delete(runConfigPath);
                    rows.Add(new ComparisonRow { Method = name, Status = "missing", Note = e.Message });
                    context.Out.WriteLine($"{tag}: missing: {e.Message}");
                    continue;
                }

                context.Out.WriteLine($"{tag}: training ({overlays.ExampleFile(SweepBase(name))}{(steps is { } n ? $", {n} steps" : "")})");
                var argv = new List<string>(prefix) { "train", "--config", runConfigPath };
                foreach (var s in sets) { argv.Add(HostConfiguration.SetOption); argv.Add(s); }
                foreach (var d in pluginDirs) { argv.Add(HostConfiguration.PluginsOption); argv.Add(Path.GetFullPath(d)); }
                var (code, lastError, peakRss) = RunChild(exe, argv, Path.Combine(tmp, "logs", name + ".log"), line => context.Out.WriteLine($"    {line}"));
                File.Delete(runConfigPath);
                if (code != 0 || !File.Exists(Path.Combine(runDir, "training_summary.json")))
                {
                    var note = $"peft train exited with code {code}" + (lastError is null ? "" : $": {lastError}");
                    rows.Add(new ComparisonRow { Method = name, Status = "failed", Note = note, PeakRssBytes = peakRss });
                    context.Out.WriteLine($"{tag}: failed: {note}");
                    continue;
                }
                var row = ComparisonRow.FromRun(name, runDir, peakRss);
                rows.Add(row);
                context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{tag}: ok, held-out loss {row.HeldOutLoss:0.0000}, {row.TokensPerSecond:0} tokens/s"));
            }

            double? baseLoss = BaseHeldOutLoss(root, catalog, modelOptions.Path!, cfg);
            var table = ComparisonTable.Build(baseLoss, rows, new JsonObject
            {
                ["config"] = Path.GetFullPath(configPath),
                ["steps"] = steps is { } st ? st : cfg.Training.MaxSteps,
                ["seed"] = cfg.Training.Seed,
                ["batch_size"] = cfg.Training.BatchSize,
                ["seq_len"] = cfg.Data.SeqLen,
                ["data"] = cfg.Data.Path,
                ["examples"] = Path.GetFullPath(examplesDir),
                ["set"] = new JsonArray(sets.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray()),
                ["machine"] = $"{Environment.ProcessorCount} logical CPUs, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
            });
            AtomicFile.WriteText(Path.Combine(tmp, ComparisonTable.MarkdownFile), table.ToMarkdown());
            AtomicFile.WriteText(Path.Combine(tmp, ComparisonTable.JsonFile), table.ToJson());
            LossCurvePlot.WriteSeries(Path.Combine(tmp, ComparisonTable.PlotFile),
                table.Rows.Where(r => r.EvalCurve.Count > 0).Select(r => (r.Method, r.EvalCurve)).ToList(), "Held-out loss by method");
            context.Out.WriteLine();
            context.Out.Write(table.ToMarkdown());
            exitCode = rows.All(r => r.Status == "ok") ? 0 : 1;
        });
        context.Out.WriteLine($"comparison in {outDir}");
        return exitCode;
    }

    static string SweepBase(string name) => MethodOverlays.SweepVariant(name)?.Base ?? name;

    static List<int> IntList(string? value, string option)
    {
        if (value is null) return [];
        var result = new List<int>();
        foreach (var part in value.Split(',', StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out var v) || v < 1 || v > 1_000_000)
                throw new CliException($"option '{option}': '{part}' is not a positive whole number (give a list like 1,4,8)");
            result.Add(v);
        }
        return result;
    }

    /// <summary>The held-out loss of the untouched base model on the base configuration's validation split (null when the model folder does not exist).</summary>
    static double? BaseHeldOutLoss(Microsoft.Extensions.Configuration.IConfiguration root, PluginCatalog catalog, string modelDir, TrainingConfiguration cfg)
    {
        if (!Directory.Exists(modelDir)) return null;
        if (cfg.Training.NumThreads > 0) torch.set_num_threads(cfg.Training.NumThreads);
        var (model, tokenizer) = ModelFolderArgs.Open("compare", modelDir, catalog);
        using (model)
        {
            var data = TrainingDataSet.Load(cfg.Data, tokenizer, cfg.Training.Seed);
            if (data.Validation.Count == 0) return null;
            return Trainer.Evaluate(model, data.Validation, cfg.Training.BatchSize, cfg.Training.EvalBatches, data.PadId, cfg.Training.LossChunkTokens).Loss;
        }
    }

    /// <summary>How to start this host again: the apphost itself, or <c>dotnet peft.dll</c>.</summary>
    static (string Exe, List<string> Prefix) HostExecutable(string baseDirectory)
    {
        var self = Environment.ProcessPath;
        var dll = Path.Combine(baseDirectory, "peft.dll");
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "peft") return (self, []);
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet") return (self, [dll]);
        return (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet", [dll]);
    }

    /// <summary>
    /// Run one child to completion: stdout and stderr to <paramref name="logPath"/>, its evaluation lines relayed,
    /// its peak resident set sampled from /proc (Linux; null elsewhere). Returns the exit code and the last stderr line.
    /// </summary>
    static (int Code, string? LastError, long? PeakRss) RunChild(string exe, IReadOnlyList<string> argv, string logPath, Action<string> relay)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in argv) psi.ArgumentList.Add(a);
        using var log = new StreamWriter(logPath) { AutoFlush = true };
        var gate = new object();
        string? lastError = null;
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (gate)
            {
                log.WriteLine(e.Data);
                if (e.Data.Contains("eval loss", StringComparison.Ordinal)) relay(e.Data);
            }
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (gate)
            {
                log.WriteLine(e.Data);
                if (e.Data.Trim().Length > 0) lastError = e.Data.Trim();
            }
        };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        long? peak = null;
        var status = $"/proc/{p.Id}/status";
        while (!p.WaitForExit(100))
            if (ReadVmHwm(status) is { } hwm) peak = Math.Max(peak ?? 0, hwm);
        p.WaitForExit();
        return (p.ExitCode, lastError, peak);
    }

    static long? ReadVmHwm(string statusPath)
    {
        try
        {
            foreach (var line in File.ReadLines(statusPath))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024; // kB
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
