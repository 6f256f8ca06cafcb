using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Planning;
using Peft.Host.Plugins;
using Peft.Host.Training;

namespace Peft.Host.Commands;

/// <summary><c>peft plan</c>: the memory a fine-tuning run needs, by component, per GPU, and the GPUs it takes.</summary>
public sealed class PlanCommand : ICliCommand
{
    public string Name => "plan";
    public string Summary => "plan the memory of a fine-tuning run (weights, gradients, optimizer state, activations) per GPU";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--json", "--seed-assumptions" };

    public string Help =>
        "usage: peft plan --model PRESET|DIR|CONFIG.JSON --method NAME [options] [--json]\n" +
        "       peft plan --config RUN.json [--model DIR] [options]     (predict a 'peft train' run)\n\n" +
        "Presets: " + string.Join(", ", ModelPresets.Names) + ".\n" +
        "Methods: " + string.Join(", ", PlanShorthand.Known) + ", or a plugin's method name (planned from its EstimateMemory).\n" +
        "Each component's figure comes from its plugin when loaded, else from the planner's formula (docs/planner.md).\n\n" +
        "options:\n" +
        "  --method NAME              what to plan (overrides the method/quantization/optimizer/hooks of --config)\n" +
        "  --quantize nf4|fp4|int8    quantize the frozen base (qlora implies nf4; with galore: GaLore on a quantized base)\n" +
        "  --double-quant true|false  NF4/FP4 double quantization of the block statistics (default true)\n" +
        "  --r N                      adapter rank (default 16)\n" +
        "  --target-modules A,B       adapter targets (default q_proj,v_proj; all-linear for every linear but the head)\n" +
        "  --lisa-k K                 LISA: decoder layers trained at once (default 2)\n" +
        "  --galore-rank R            GaLore rank (default 128)\n" +
        "  --galore-type std|full     one-sided projection (default, the official 'std') or two-sided (the seed's)\n" +
        "  --galore-layerwise true|false  update each weight in its gradient hook (one gradient held at a time)\n" +
        "  --precision mixed|fp32     mixed: bf16 weights/gradients + fp32 master and moments (default for presets);\n" +
        "                             fp32: everything fp32 (what 'peft train' does on the CPU; default with --config)\n" +
        "  --master-weights true|false  keep the fp32 master copy in mixed precision (default true)\n" +
        "  --base-dtype bf16|fp16|fp32  storage of the frozen base (default bf16; with --config its training:base_dtype)\n" +
        "  --batch-size B             micro-batch per GPU (default 1; 0: no activations)\n" +
        "  --seq-len T                tokens per sequence (default 2048)\n" +
        "  --activation-checkpointing true|false\n" +
        "  --loss-chunk-tokens N      peft train's chunked loss (no whole logits); default 0 (full logits), with\n" +
        "                             --config its training:loss_chunk_tokens\n" +
        "  --gpus N                   data-parallel GPUs (default 1)\n" +
        "  --zero 0|1|2|3             ZeRO stage: shard optimizer state (1), + gradients (2), + weights (3)\n" +
        "  --gpu-memory GB            memory of one GPU: says whether it fits and the minimum GPU count\n" +
        "  --seed-assumptions         the seed's simplified arithmetic, to check its numbers (no GQA, its activation guess...)\n" +
        "  --json                     one JSON document (byte counts under snake_case keys, total_bytes)\n" +
        HostConfiguration.OptionsHelp + "\n\n" +
        "examples:\n" +
        "  peft plan --model llama2-70b --method qlora --r 16 --target-modules q_proj,k_proj,v_proj,o_proj --gpu-memory 48\n" +
        "  peft plan --model seed-70b --method lora --target-modules q_proj,k_proj,v_proj,o_proj --seed-assumptions\n" +
        "  peft plan --model llama3-8b --method galore --galore-layerwise true --gpus 8 --zero 2 --gpu-memory 24 --json";

    static readonly JsonSerializerOptions JsonOutput = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public int Run(CommandArgs args, CliContext context)
    {
        var json = args.Flag("--json");
        var seed = args.Flag("--seed-assumptions");
        var configFile = args.Optional(HostConfiguration.ConfigOption);
        var root = HostConfiguration.Load(args);
        var request = PlanArguments.Read(Name, args, root, configFile is not null);
        args.ThrowOnUnused();

        MemoryPlan plan;
        if (seed)
        {
            plan = SeedBudget.Plan(request.Model, request.SeedInputs(Name), request.Settings);
        }
        else
        {
            using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, root);
            plan = MemoryPlanner.Plan(request.Model, request.Settings, new CatalogComponents(catalog));
        }
        if (json) context.Out.WriteLine(PlanReport.ToJson(plan).ToJsonString(JsonOutput));
        else PlanReport.WriteTable(context.Out, plan);
        return 0;
    }
}

/// <summary>The model, components and settings of a plan, read from the command line (and a training configuration).</summary>
internal sealed record PlanArguments(PlanModel Model, PlanSettings Settings, string? Method, MethodKnobs Knobs)
{
    public SeedInputs SeedInputs(string verb)
    {
        if (Method is null) throw new CliException($"{verb}: --seed-assumptions needs --method");
        return new SeedInputs(Method.ToLowerInvariant().Replace("qlora-dora", "qlora+dora"), Knobs.Rank,
            Knobs.TargetModules?.Count ?? 4, Knobs.LisaK, Knobs.GaloreRank, Quantize: Knobs.Quantize);
    }

    public static PlanArguments Read(string verb, CommandArgs args, IConfiguration root, bool fromConfig, bool methodRequired = true)
    {
        var modelArg = args.Optional("--model") ?? (fromConfig ? root["model:path"] : null)
            ?? throw new CliException($"{verb}: missing required option '--model' (a preset: {string.Join(", ", ModelPresets.Names)}; or an HF model folder or config.json)");
        var model = ModelPresets.Resolve(modelArg);

        var method = args.Optional("--method");
        var knobs = new MethodKnobs
        {
            Rank = args.Int("--r", 16, 1, 1 << 20),
            TargetModules = args.Optional("--target-modules") is { } t ? Targets(verb, t) : null,
            Quantize = args.Optional("--quantize") is { } q ? Choice(verb, "--quantize", q, "nf4", "fp4", "int8") : null,
            DoubleQuant = Bool(verb, args, "--double-quant", true),
            LisaK = args.Int("--lisa-k", 2, 1, model.Shape.NumHiddenLayers),
            GaloreRank = args.Int("--galore-rank", 128, 1, 1 << 20),
            GaloreType = Choice(verb, "--galore-type", args.Optional("--galore-type") ?? "std", "std", "full"),
            GaloreLayerwise = Bool(verb, args, "--galore-layerwise", false),
        };
        if (method is null && !fromConfig && methodRequired)
            throw new CliException($"{verb}: missing required option '--method' ({string.Join(", ", PlanShorthand.Known)}, or a plugin's method), or --config with a method section");

        // defaults: presets plan a GPU run in mixed precision; a training configuration plans what 'peft train' does (fp32 on the CPU)
        var trainingOptions = fromConfig ? TrainingConfiguration.Bind(root) : null;
        var precision = Choice(verb, "--precision", args.Optional("--precision") ?? (fromConfig ? "fp32" : "mixed"), "mixed", "fp32");
        int baseBytes = DtypeBytes(verb, "--base-dtype", args.Optional("--base-dtype")
            ?? (trainingOptions?.Training.BaseDtype is { } bd ? (bd == "bfloat16" ? "bf16" : "fp32") : "bf16"));
        var gpuMemory = args.Optional("--gpu-memory") is not null ? args.Double("--gpu-memory", 0, double.Epsilon) : (double?)null;
        if (gpuMemory is <= 0) throw new CliException($"{verb}: option '--gpu-memory' must be a positive number of GB");
        var settings = new PlanSettings
        {
            Components = method is not null ? PlanShorthand.Components(method, knobs) : root,
            Label = method ?? "",
            Precision = precision == "fp32" ? PlanPrecision.Fp32 : PlanPrecision.Mixed,
            BaseDtypeBytes = baseBytes,
            ActivationDtypeBytes = precision == "fp32" ? 4 : 2,
            MasterWeights = Bool(verb, args, "--master-weights", true),
            BatchSize = args.Int("--batch-size", trainingOptions?.Training.BatchSize ?? 1, 0, 1 << 20),
            SeqLen = args.Int("--seq-len", trainingOptions?.Data.SeqLen ?? 2048, 1, 1 << 24),
            ActivationCheckpointing = Bool(verb, args, "--activation-checkpointing", trainingOptions?.Training.ActivationCheckpointing ?? false),
            LossChunkTokens = args.Int("--loss-chunk-tokens", trainingOptions?.Training.LossChunkTokens ?? 0, 0, 1 << 24),
            Gpus = args.Int("--gpus", 1, 1, 1 << 20),
            ZeroStage = args.Int("--zero", 0, 0, 3),
            GpuMemoryBytes = gpuMemory is { } g ? (long)Math.Round(g * 1e9) : null,
        };
        return new PlanArguments(model, settings, method, knobs);
    }

    static IReadOnlyList<string> Targets(string verb, string value)
    {
        var list = value.Split(',', StringSplitOptions.TrimEntries);
        if (list.Any(string.IsNullOrEmpty)) throw new CliException($"{verb}: option '--target-modules' has value '{value}': expected comma-separated module names");
        return list;
    }

    internal static string Choice(string verb, string name, string value, params string[] allowed) =>
        allowed.FirstOrDefault(a => string.Equals(a, value, StringComparison.OrdinalIgnoreCase))
        ?? throw new CliException($"{verb}: option '{name}' has value '{value}': expected {string.Join(" or ", allowed)}");

    internal static bool Bool(string verb, CommandArgs args, string name, bool fallback)
    {
        var v = args.Optional(name);
        if (v is null) return fallback;
        return bool.TryParse(v, out var b) ? b : throw new CliException($"{verb}: option '{name}' has value '{v}': expected true or false");
    }

    static int DtypeBytes(string verb, string name, string value) => Choice(verb, name, value, "bf16", "fp16", "fp32", "bfloat16", "float16", "float32").ToLowerInvariant() switch
    {
        "fp32" or "float32" => 4,
        _ => 2,
    };
}
