using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Peft.Abstractions.Model;
using Peft.Host.Analysis;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Commands;

/// <summary>
/// <c>peft analyze --model BASE --adapter DIR | --trained DIR [--json]</c>: DoRA's magnitude / direction analysis
/// (<see cref="WeightDecomposition"/>) of fine-tuned weights against the base, per decoder-layer linear slot, and the
/// ΔM–ΔD correlation over layers and checkpoints. The fine-tuned weights of a source are
/// <list type="bullet">
/// <item>an adapter folder (LoRA, DoRA...): the base with the adapter merged in (W' = the merged dense weight);</item>
/// <item>a checkpoint of <c>peft train</c>: its <c>adapter/</c> merged as above, or — full fine-tuning — the weights
///   in its <c>trainable.safetensors</c>;</item>
/// <item>a full model folder (<c>model/</c> of a full fine-tuning run).</item>
/// </list>
/// <c>--trained DIR</c> analyses every checkpoint of a run (checkpoints/step-N, oldest first), or its final result
/// when it has none.
/// </summary>
public sealed class AnalyzeCommand : ICliCommand
{
    public string Name => "analyze";
    public string Summary => "magnitude/direction analysis (ΔM, ΔD and their correlation) of a fine-tuned model against its base";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--json" };

    public string Help =>
        "usage: peft analyze --model BASE (--adapter DIR | --trained RUN_DIR) [--modules q_proj,v_proj,...] [--json]\n\n" +
        "Per decoder-layer linear weight W' [out, in] against the base W0 (DoRA, arXiv 2402.09353, eq. 2-4; a 'column'\n" +
        "of the paper is one output feature, a row of the torch weight):\n" +
        "  dM = mean over output features of | ||W'_n|| - ||W0_n|| |      dD = mean of ( 1 - cos(W'_n, W0_n) )\n" +
        "and Pearson's correlation of (dD, dM) over layers and checkpoints, per module kind (the paper: full\n" +
        "fine-tuning and DoRA negative, LoRA positive).\n\n" +
        "options:\n" +
        "  --model BASE               the base HF model folder the run started from\n" +
        "  --adapter DIR              an HF PEFT adapter folder (merged into the base for the analysis)\n" +
        "  --trained RUN_DIR          a 'peft train' output folder: every checkpoints/step-N (or its final result)\n" +
        "  --modules LIST             module short names to analyse (default: every decoder-layer linear)\n" +
        "  --json                     end with one JSON line holding every point and correlation\n" +
        HostConfiguration.PluginsHelp + "\n\n" +
        "example:\n" +
        "  peft analyze --model out/models/stories260K --trained out/compare/runs/dora";

    public int Run(CommandArgs args, CliContext context)
    {
        var modelDir = args.Required("--model");
        var adapterDir = args.Optional("--adapter");
        var trainedDir = args.Optional("--trained");
        var modules = args.Optional("--modules")?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        bool json = args.Flag("--json");
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        args.ThrowOnUnused();
        if ((adapterDir is null) == (trainedDir is null)) throw new CliException($"{Name}: give exactly one of --adapter DIR and --trained RUN_DIR");
        if (adapterDir is not null && !Directory.Exists(adapterDir)) throw new CliException($"{Name}: option '--adapter': '{adapterDir}' is not a folder");
        if (trainedDir is not null && !Directory.Exists(trainedDir)) throw new CliException($"{Name}: option '--trained': '{trainedDir}' is not a folder");

        var sources = adapterDir is not null ? [new Source("adapter", SourceKind.Adapter, adapterDir)] : SourcesOf(trainedDir!);
        using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, pluginConfig);
        var (baseModel, _) = ModelFolderArgs.Open(Name, modelDir, catalog);
        var points = new List<DecompositionPoint>();
        using (baseModel)
        {
            var slots = baseModel.LinearSlots.Where(s => s.LayerIndex is not null && (modules is null || modules.Contains(s.ShortName))).ToList();
            if (slots.Count == 0) throw new CliException($"{Name}: option '--modules': no decoder-layer linear is named {string.Join(", ", modules ?? [])} (short names: {string.Join(", ", baseModel.LinearSlots.Select(s => s.ShortName).Distinct())})");
            var baseWeights = slots.ToDictionary(s => s.Name, s => baseModel.GetLinear(s.Name).DenseWeight(ScalarType.Float64));
            try
            {
                foreach (var source in sources)
                {
                    context.Out.WriteLine($"analysing {source.Label} ({source.Path})");
                    foreach (var (slot, tuned) in TunedWeights(source, modelDir, slots, catalog))
                        using (tuned)
                        {
                            var (dm, dd) = WeightDecomposition.Compare(baseWeights[slot.Name], tuned);
                            points.Add(new DecompositionPoint(source.Label, slot.Name, slot.ShortName, slot.LayerIndex!.Value, dm, dd));
                        }
                }
            }
            finally { foreach (var w in baseWeights.Values) w.Dispose(); }
        }
        var report = DecompositionReport.From(points);
        context.Out.Write(report.ToMarkdown());
        if (json) context.Out.WriteLine(report.ToJson().ToJsonString());
        return 0;
    }

    enum SourceKind { Adapter, TrainableFile, ModelFolder }

    sealed record Source(string Label, SourceKind Kind, string Path);

    /// <summary>The checkpoints of a run, oldest first; without checkpoints, its final adapter/ or model/.</summary>
    static List<Source> SourcesOf(string runDir)
    {
        var result = new List<Source>();
        foreach (var (_, checkpoint) in CheckpointStore.List(runDir))
        {
            var label = Path.GetFileName(checkpoint);
            var adapter = Path.Combine(checkpoint, "adapter");
            if (Directory.Exists(adapter)) result.Add(new Source(label, SourceKind.Adapter, adapter));
            else result.Add(new Source(label, SourceKind.TrainableFile, Path.Combine(checkpoint, CheckpointStore.TrainableFile)));
        }
        if (result.Count > 0) return result;
        if (Directory.Exists(Path.Combine(runDir, "adapter"))) return [new Source("final", SourceKind.Adapter, Path.Combine(runDir, "adapter"))];
        if (File.Exists(Path.Combine(runDir, "model", HfModelFolder.ConfigFile))) return [new Source("final", SourceKind.ModelFolder, Path.Combine(runDir, "model"))];
        throw new CliException($"analyze: option '--trained': '{runDir}' holds no checkpoints/step-N, adapter/ or model/ written by peft train");
    }

    /// <summary>The fine-tuned dense weight of every slot (float64, caller disposes).</summary>
    static IEnumerable<(LinearSlot Slot, Tensor Weight)> TunedWeights(Source source, string modelDir, IReadOnlyList<LinearSlot> slots, PluginCatalog catalog)
    {
        switch (source.Kind)
        {
            case SourceKind.TrainableFile:
            {
                var tensors = Safetensors.Load(source.Path);
                try
                {
                    var missing = slots.Select(s => s.Name + ".weight").Where(k => !tensors.ContainsKey(k)).ToList();
                    if (missing.Count > 0)
                        throw new PeftFormatException($"{source.Path}: holds no '{missing[0]}' (a full fine-tuning checkpoint holds every weight; restrict --modules to what was trained)");
                    foreach (var slot in slots) yield return (slot, tensors[slot.Name + ".weight"].to(ScalarType.Float64));
                }
                finally { foreach (var t in tensors.Values) t.Dispose(); }
                break;
            }
            default:
            {
                var (model, _) = ModelFolderArgs.Open("analyze", source.Kind == SourceKind.ModelFolder ? source.Path : modelDir, catalog);
                using (model)
                {
                    if (source.Kind == SourceKind.Adapter)
                        AdapterAttachment.AttachWith(catalog, source.Path, model).MergeAndUnload(safe: true);
                    foreach (var slot in slots) yield return (slot, model.GetLinear(slot.Name).DenseWeight(ScalarType.Float64));
                }
                break;
            }
        }
    }
}

/// <summary>One slot of one source: ΔM and ΔD of its weight against the base.</summary>
public sealed record DecompositionPoint(string Source, string Slot, string ShortName, int Layer, double DeltaM, double DeltaD);

/// <summary>The points, the means per source and module kind, and Pearson's r(ΔD, ΔM) per module kind and overall.</summary>
public sealed class DecompositionReport
{
    public required IReadOnlyList<DecompositionPoint> Points { get; init; }

    public static DecompositionReport From(IReadOnlyList<DecompositionPoint> points) => new() { Points = points };

    /// <summary>r(ΔD, ΔM) over every point of one module kind (all layers, all sources).</summary>
    public double Correlation(string? shortName = null)
    {
        var p = Points.Where(x => shortName is null || x.ShortName == shortName).ToList();
        return WeightDecomposition.Pearson(p.Select(x => x.DeltaD).ToList(), p.Select(x => x.DeltaM).ToList());
    }

    IEnumerable<string> Kinds => Points.Select(p => p.ShortName).Distinct();
    IEnumerable<string> Sources => Points.Select(p => p.Source).Distinct();

    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        string F(double v, string f = "0.000000") => double.IsFinite(v) ? v.ToString(f, CultureInfo.InvariantCulture) : "–";
        sb.Append("\n| source | module | mean ΔM | mean ΔD | layers |\n|---|---|---:|---:|---:|\n");
        foreach (var s in Sources)
            foreach (var k in Kinds)
            {
                var p = Points.Where(x => x.Source == s && x.ShortName == k).ToList();
                if (p.Count == 0) continue;
                sb.Append(CultureInfo.InvariantCulture, $"| {s} | {k} | {F(p.Average(x => x.DeltaM))} | {F(p.Average(x => x.DeltaD))} | {p.Count} |\n");
            }
        sb.Append("\n| module | points | r(ΔD, ΔM) |\n|---|---:|---:|\n");
        foreach (var k in Kinds)
            sb.Append(CultureInfo.InvariantCulture, $"| {k} | {Points.Count(x => x.ShortName == k)} | {F(Correlation(k), "0.000")} |\n");
        sb.Append(CultureInfo.InvariantCulture, $"| all | {Points.Count} | {F(Correlation(), "0.000")} |\n");
        if (Sources.Count() > 1)
        {
            // within one checkpoint (across layers and modules): free of the common drift of both with training time
            sb.Append("\n| source | points | r(ΔD, ΔM) within the source |\n|---|---:|---:|\n");
            foreach (var s in Sources)
            {
                var p = Points.Where(x => x.Source == s).ToList();
                sb.Append(CultureInfo.InvariantCulture, $"| {s} | {p.Count} | {F(WeightDecomposition.Pearson(p.Select(x => x.DeltaD).ToList(), p.Select(x => x.DeltaM).ToList()), "0.000")} |\n");
            }
        }
        return sb.ToString();
    }

    public JsonObject ToJson()
    {
        static JsonNode? N(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;
        var correlations = new JsonObject();
        foreach (var k in Kinds) correlations[k] = N(Correlation(k));
        correlations["all"] = N(Correlation());
        return new JsonObject
        {
            ["points"] = new JsonArray(Points.Select(p => (JsonNode)new JsonObject
            {
                ["source"] = p.Source, ["slot"] = p.Slot, ["module"] = p.ShortName, ["layer"] = p.Layer,
                ["delta_m"] = N(p.DeltaM), ["delta_d"] = N(p.DeltaD),
            }).ToArray()),
            ["correlation"] = correlations,
        };
    }
}
