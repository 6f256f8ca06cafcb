using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Plugins;

namespace Peft.Host.Commands;

/// <summary><c>peft plugins [--json]</c>: every loaded plugin, its version, file and what it provides.</summary>
public sealed class PluginsCommand : ICliCommand
{
    public string Name => "plugins";

    public string Summary => "list the loaded plugins and the methods, quantizers, optimizers and hooks they provide";

    public string Help =>
        "usage: peft plugins [--json] [--config FILE] [--set SECTION:KEY=VALUE]...\n\n" +
        "Loads every plugin from the host's plugins/ folder and from the folders in plugins:directories\n" +
        "(each is a plugin folder holding X.dll next to X.deps.json, or a folder of such plugin folders)\n" +
        "and lists each one: name, version, assembly path and what it provides.\n\n" +
        "options:\n" +
        "  --json                     print a JSON array instead of text\n" +
        HostConfiguration.OptionsHelp + "\n\n" +
        "example:\n" +
        "  peft plugins --set plugins:directories:0=./my-plugins --json";

    // Paths and versions ('+') printed as they are, not \u-escaped (the output is not HTML).
    static readonly JsonSerializerOptions JsonOutput = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--json" };

    public int Run(CommandArgs args, CliContext context)
    {
        var json = args.Flag("--json");
        var configuration = HostConfiguration.Load(args);
        args.ThrowOnUnused();

        PluginCatalog catalog;
        try
        {
            catalog = PluginCatalog.LoadForHost(context.BaseDirectory, configuration);
        }
        catch (PluginLoadException e)
        {
            throw new CliException(e.Message);
        }
        using (catalog)
        {
            var plugins = catalog.Plugins.OrderBy(p => p.Name, StringComparer.Ordinal).ToList();
            if (json) context.Out.WriteLine(ToJson(plugins).ToJsonString(JsonOutput));
            else WriteText(context.Out, plugins, catalog.BuiltIns, Path.Combine(context.BaseDirectory, "plugins"));
        }
        return 0;
    }

    static JsonArray ToJson(IEnumerable<LoadedPlugin> plugins)
    {
        static JsonArray Names(IEnumerable<string> names) => new(names.Select(n => (JsonNode?)JsonValue.Create(n)).ToArray());
        return new JsonArray(plugins.Select(p => (JsonNode?)new JsonObject
        {
            ["name"] = p.Name,
            ["version"] = p.Version,
            ["description"] = p.Description,
            ["assembly"] = p.AssemblyPath,
            ["provides"] = new JsonObject
            {
                ["methods"] = Names(p.Provides.Methods),
                ["quantizers"] = Names(p.Provides.Quantizers),
                ["optimizer_strategies"] = Names(p.Provides.OptimizerStrategies),
                ["hooks"] = Names(p.Provides.Hooks),
            },
        }).ToArray());
    }

    static void WriteText(TextWriter output, IReadOnlyList<LoadedPlugin> plugins, ProvidedServices builtIns, string defaultDirectory)
    {
        if (plugins.Count == 0)
            output.WriteLine($"no plugins loaded (searched {defaultDirectory} and plugins:directories)");
        foreach (var p in plugins)
        {
            output.WriteLine($"{p.Name} {p.Version}");
            if (p.Description.Length > 0) output.WriteLine($"  {p.Description}");
            output.WriteLine($"  assembly: {p.AssemblyPath}");
            output.WriteLine(p.Provides.IsEmpty
                ? "  provides: nothing yet (it registers no method, quantizer, optimizer strategy or hook)"
                : $"  provides: {p.Provides}");
        }
        if (!builtIns.IsEmpty)
            output.WriteLine($"built into the host: {builtIns}");
    }
}
