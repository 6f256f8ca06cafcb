using System.Text.Json;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.EnvironmentVariables;
using Microsoft.Extensions.Configuration.Json;
using Microsoft.Extensions.Configuration.Memory;
using Peft.Abstractions;
using Peft.Host.Cli;
using Peft.Host.Plugins;

namespace Peft.Host.Configuration;

/// <summary>
/// Builds the host's configuration from three layers, later ones winning:
/// <list type="number">
/// <item>a JSON file (<c>--config run.json</c>), keys in snake_case: <c>{ "training": { "learning_rate": 2e-4 } }</c>;</item>
/// <item>environment variables starting with <c>PEFT_</c>, <c>__</c> separating sections:
///   <c>PEFT_training__learning_rate=1e-4</c> (every <c>PEFT_</c> variable is configuration);</item>
/// <item><c>--set section:key=value</c> options, repeatable (<c>--set hooks:0:name=lisa</c>; the last of two
///   <c>--set</c> for one key wins).</item>
/// </list>
/// Then it checks the top level against <see cref="ConfigSections"/> and validates the sections that have an
/// options class. A missing or unreadable file, or a malformed <c>--set</c>, is a <see cref="CliException"/>
/// naming it; a wrong key or value is a <see cref="PeftConfigurationException"/> naming key and value.
/// </summary>
public static class HostConfiguration
{
    public const string EnvironmentPrefix = "PEFT_";
    public const string ConfigOption = "--config";
    public const string SetOption = "--set";
    public const string PluginsOption = "--plugins";

    /// <summary>Help text for <c>--plugins</c>, which every verb accepts.</summary>
    public const string PluginsHelp =
        "  --plugins DIR              also load plugins from DIR (a plugin folder or a folder of them; repeatable;\n" +
        "                             same as plugins:directories in JSON or PEFT_plugins__directories__0)";

    /// <summary>Help text for the options every configuration-reading verb accepts.</summary>
    public const string OptionsHelp =
        "  --config FILE              JSON configuration file (snake_case keys)\n" +
        "  --set SECTION:KEY=VALUE    override one key (repeatable; wins over the file and PEFT_* environment variables)\n" +
        PluginsHelp;

    /// <summary>Read <c>--config</c>, every <c>--set</c> and every <c>--plugins</c> from the verb's options and load.</summary>
    public static IConfigurationRoot Load(CommandArgs args) => Load(args.Optional(ConfigOption), args.Many(SetOption), pluginDirectories: args.Many(PluginsOption));

    /// <summary>For verbs without a configuration file (eval, generate, merge): <c>PEFT_*</c> variables and every <c>--plugins</c>.</summary>
    public static IConfigurationRoot LoadPlugins(CommandArgs args) => Load(null, [], pluginDirectories: args.Many(PluginsOption));

    /// <param name="configFile">The JSON file, or null for none.</param>
    /// <param name="overrides"><c>section:key=value</c> strings from <c>--set</c>.</param>
    /// <param name="includeEnvironment">Read <c>PEFT_*</c> environment variables (tests may turn this off).</param>
    /// <param name="pluginDirectories"><c>--plugins</c> folders, appended to <c>plugins:directories</c> from the other layers.</param>
    public static IConfigurationRoot Load(string? configFile, IEnumerable<string> overrides, bool includeEnvironment = true,
                                          IEnumerable<string>? pluginDirectories = null)
    {
        var builder = new ConfigurationBuilder();
        string? fullPath = null;
        if (configFile is not null)
        {
            fullPath = Path.GetFullPath(configFile);
            if (!File.Exists(fullPath))
                throw new CliException($"configuration file '{configFile}' does not exist" + (Directory.Exists(fullPath) ? " (it is a folder)" : ""));
            builder.AddJsonFile(fullPath, optional: false, reloadOnChange: false);
        }
        if (includeEnvironment) builder.AddEnvironmentVariables(EnvironmentPrefix);
        builder.AddInMemoryCollection(ParseOverrides(overrides));

        IConfigurationRoot root;
        try
        {
            root = builder.Build();
        }
        catch (Exception e) when (fullPath is not null && e is InvalidDataException or FormatException or JsonException)
        {
            // InvalidDataException("Failed to load configuration from file ...") wraps the JsonException
            // (with line and position); FormatException: duplicate key or a non-object top level.
            var chain = new List<string>();
            for (Exception? x = e is InvalidDataException && e.InnerException is not null ? e.InnerException : e; x is not null; x = x.InnerException)
                chain.Add(x.Message.TrimEnd('.'));
            var reason = string.Join(": ", chain);
            throw new CliException($"configuration file '{configFile}' is not a valid JSON configuration: {reason}");
        }
        var extra = (pluginDirectories ?? []).ToList();
        if (extra.Count > 0)
        {
            foreach (var dir in extra)
                if (string.IsNullOrWhiteSpace(dir) || !Directory.Exists(dir))
                    throw new CliException($"option '{PluginsOption}': '{dir}' is not a folder" +
                                           (File.Exists(dir) ? " (it is a file; give the folder that holds the plugin's .dll and .deps.json)" : ""));
            int first = root.GetSection(PluginsOptions.Section + ":directories").GetChildren().Count();
            builder.AddInMemoryCollection(extra.Select((dir, i) =>
                new KeyValuePair<string, string?>($"{PluginsOptions.Section}:directories:{first + i}", dir)));
            root = builder.Build();
        }
        Validate(root);
        return root;
    }

    /// <summary>Parse <c>--set</c> values into keys; the last value for a key wins.</summary>
    public static IReadOnlyDictionary<string, string?> ParseOverrides(IEnumerable<string> overrides)
    {
        var result = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var item in overrides)
        {
            var eq = item.IndexOf('=');
            if (eq < 0)
                throw new CliException($"{SetOption} '{item}': expected SECTION:KEY=VALUE (no '=' found)");
            var key = item[..eq].Trim();
            if (key.Length == 0 || key.Split(':').Any(part => part.Trim().Length == 0))
                throw new CliException($"{SetOption} '{item}': the key before '=' must be a path like training:learning_rate (empty part in '{key}')");
            result.Remove(key); // keep the spelling of the last one
            result[key] = item[(eq + 1)..];
        }
        return result;
    }

    /// <summary>
    /// Every top-level key must be a known section holding keys (not a bare value); known sections with an
    /// options class are bound strictly.
    /// </summary>
    public static void Validate(IConfigurationRoot root)
    {
        foreach (var child in root.GetChildren())
        {
            var section = ConfigSections.Find(child.Key);
            if (section is null)
                throw new PeftConfigurationException(child.Key, child.Value,
                    $"unknown top-level section (set by {SourceOf(root, child.Key)}; known sections: {ConfigSections.KnownNames})");
            if (!string.IsNullOrEmpty(child.Value) && !child.GetChildren().Any()) // "{}" reads as ""
                throw new PeftConfigurationException(child.Key, child.Value,
                    $"'{section.Name}' is a section and needs keys (e.g. {section.Name}:KEY=VALUE), not a single value (set by {SourceOf(root, child.Key)})");
        }
        foreach (var section in ConfigSections.Known)
            if (section.Validate is not null && root.GetSection(section.Name).Exists())
                section.Validate(root);
    }

    /// <summary>Which layer set a top-level key (the highest-precedence one), for error messages.</summary>
    static string SourceOf(IConfigurationRoot root, string topLevelKey)
    {
        foreach (var provider in root.Providers.Reverse())
        {
            if (!provider.GetChildKeys(Array.Empty<string>(), null).Contains(topLevelKey, StringComparer.OrdinalIgnoreCase)) continue;
            return provider switch
            {
                JsonConfigurationProvider json => $"configuration file '{json.Source.FileProvider?.GetFileInfo(json.Source.Path ?? "").PhysicalPath ?? json.Source.Path}'",
                EnvironmentVariablesConfigurationProvider => $"an environment variable {EnvironmentPrefix}{topLevelKey}...",
                MemoryConfigurationProvider => $"{SetOption} {topLevelKey}...",
                _ => provider.ToString() ?? "?",
            };
        }
        return "?";
    }
}
