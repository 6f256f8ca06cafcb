using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Planning;
using Peft.Host.Plugins;

namespace Peft.Host.Commands;

/// <summary><c>peft recommend</c>: which method to use on the hardware at hand, decided from planned budgets, with the seed's rule of thumb beside it.</summary>
public sealed class RecommendCommand : ICliCommand
{
    public string Name => "recommend";
    public string Summary => "recommend a method for a model size, GPUs and quality need (the seed's decision matrix, checked by the planner)";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--json", "--explain" };

    public string Help =>
        "usage: peft recommend --model-size B|--model PRESET|DIR --gpu-memory GB --gpus N --quality maximum|high|acceptable\n" +
        "                      --multi-tenant true|false --throughput high|medium|low [--explain] [--json]\n\n" +
        "Prints the method name first, then its settings and a one-line reason. The decision follows the seed's\n" +
        "matrix (multi-tenant serving -> adapters; fast iteration -> LoRA; maximum quality -> full, GaLore, LISA k=8\n" +
        "or DoRA; high -> LISA k=4 or DoRA; acceptable -> QLoRA), with \"does it fit\" decided by 'peft plan' for the\n" +
        "model (ZeRO-3 over the GPUs). The seed's round-number rule of thumb is printed too when it disagrees.\n\n" +
        "options:\n" +
        "  --model-size B             billions of parameters (planned with the nearest preset unless --model is given)\n" +
        "  --model PRESET|DIR         plan the actual model (" + string.Join(", ", ModelPresets.Names) + ", or a folder/config.json)\n" +
        "  --gpu-memory GB            memory of one GPU\n" +
        "  --gpus N                   number of GPUs (default 1)\n" +
        "  --quality Q                maximum, high or acceptable (default high)\n" +
        "  --multi-tenant true|false  serving many fine-tuned variants from one base (default false)\n" +
        "  --throughput T             training throughput priority: high, medium, low (default medium)\n" +
        "  --batch-size B --seq-len T --activation-checkpointing true|false   the batch the budgets assume\n" +
        "                             (default 1 x 2048 with checkpointing)\n" +
        "  --explain                  print every budget the decision priced\n" +
        "  --json                     one JSON document\n" +
        HostConfiguration.PluginsHelp + "\n\n" +
        "example:\n" +
        "  peft recommend --model-size 70 --gpu-memory 80 --gpus 8 --quality high --multi-tenant false --throughput high";

    static readonly JsonSerializerOptions JsonOutput = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public int Run(CommandArgs args, CliContext context)
    {
        var json = args.Flag("--json");
        var explain = args.Flag("--explain");
        var root = HostConfiguration.LoadPlugins(args);
        var modelArg = args.Optional("--model");
        var sizeArg = args.Optional("--model-size");
        if (modelArg is null && sizeArg is null) throw new CliException($"{Name}: give --model-size B (billions of parameters) or --model PRESET|DIR");
        var model = modelArg is not null ? ModelPresets.Resolve(modelArg) : null;
        double size = sizeArg is not null ? Positive("--model-size", sizeArg) : model!.TotalParameters / 1e9;
        double memory = Positive("--gpu-memory", args.Required("--gpu-memory"));
        int gpus = args.Int("--gpus", 1, 1, 1 << 20);
        var quality = PlanArguments.Choice(Name, "--quality", args.Optional("--quality") ?? "high", "maximum", "high", "acceptable").ToLowerInvariant() switch
        {
            "maximum" => QualityRequirement.Maximum, "high" => QualityRequirement.High, _ => QualityRequirement.Acceptable,
        };
        bool multiTenant = PlanArguments.Bool(Name, args, "--multi-tenant", false);
        var throughput = PlanArguments.Choice(Name, "--throughput", args.Optional("--throughput") ?? "medium", "high", "medium", "low").ToLowerInvariant() switch
        {
            "high" => ThroughputPriority.High, "medium" => ThroughputPriority.Medium, _ => ThroughputPriority.Low,
        };
        var template = new PlanSettings
        {
            Components = root,
            BatchSize = args.Int("--batch-size", 1, 0, 1 << 20),
            SeqLen = args.Int("--seq-len", 2048, 1, 1 << 24),
            ActivationCheckpointing = PlanArguments.Bool(Name, args, "--activation-checkpointing", true),
        };
        args.ThrowOnUnused();

        var inputs = new AdvisorInputs(size, memory, gpus, quality, multiTenant, throughput);
        var planModel = model ?? ModelPresets.Find(MethodAdvisor.NearestPreset(size))!;
        var rule = MethodAdvisor.RuleOfThumb(inputs);
        Recommendation choice;
        IReadOnlyList<CandidateBudget> budgets;
        using (var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, root))
            (choice, budgets) = MethodAdvisor.FromPlans(inputs, planModel, template, new CatalogComponents(catalog));
        bool agree = rule.Method == choice.Method;

        if (json)
        {
            JsonObject R(Recommendation r) => new() { ["method"] = r.Method, ["settings"] = r.Settings, ["reason"] = r.Reason };
            var doc = R(choice);
            doc["model"] = planModel.Name;
            doc["rule_of_thumb"] = R(rule);
            doc["agree"] = agree;
            doc["budgets"] = new JsonArray(budgets.Select(b => (JsonNode?)new JsonObject
            {
                ["method"] = b.Method, ["settings"] = b.Settings, ["fits"] = b.Fits,
                ["per_gpu_bytes"] = b.Plan.PerGpu.TotalBytes, ["total_bytes"] = b.Plan.Bytes.TotalBytes,
            }).ToArray());
            context.Out.WriteLine(doc.ToJsonString(JsonOutput));
            return 0;
        }
        context.Out.WriteLine(choice.Method + (choice.Settings.Length > 0 ? $" ({choice.Settings})" : ""));
        context.Out.WriteLine($"  reason: {choice.Reason} [planned for {planModel.Name}, ZeRO-3 over {gpus} GPU{(gpus == 1 ? "" : "s")}, {PlanReport.SettingsLine(budgets[0].Plan)}]");
        context.Out.WriteLine(agree
            ? $"  the seed's rule of thumb agrees: {rule.Reason}"
            : $"  the seed's rule of thumb says {rule.Method}: {rule.Reason}");
        if (explain)
            foreach (var b in budgets)
                context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  budget {b.Method} ({b.Settings}): {PlanReport.Gb(b.Plan.PerGpu.TotalBytes)} per GPU of {PlanReport.Gb((long)(memory * 1e9))} -> {(b.Fits ? "fits" : "does not fit")} (total {PlanReport.Gb(b.Plan.Bytes.TotalBytes)})"));
        return 0;
    }

    double Positive(string name, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 && double.IsFinite(v) ? v
            : throw new CliException($"{Name}: option '{name}' has value '{value}': expected a positive number");
}
