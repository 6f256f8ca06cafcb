using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Json;
using Microsoft.Extensions.Configuration.Memory;
using Peft.Abstractions;

namespace Peft.Host.Configuration;

/// <summary>
/// How the layers of the configuration (file, then <c>PEFT_*</c> environment variables, then <c>--set</c>) combine
/// where Microsoft.Extensions.Configuration's key-by-key merge would surprise a user:
/// <list type="bullet">
/// <item><b>Lists are replaced, not merged.</b> A layer that gives a list (<c>--set method:target_modules=[q_proj,v_proj]</c>,
///   the comma form <c>q_proj,v_proj</c> where the layer below has a list, or elements <c>method:target_modules:0=q_proj</c>)
///   replaces the whole list below it; a plain value replaces a list or section below it the same way.</item>
/// <item><b>Changing a component's name replaces its section.</b> <c>--set method:name=full</c> on a LoRA file drops
///   the file's LoRA options (they belong to the method that is no longer chosen); the same for <c>quantization</c>
///   and <c>optimizer</c>.</item>
/// <item>Only <c>PEFT_</c> + a known section name is configuration (<c>PEFT_training__learning_rate</c>); other
///   <c>PEFT_*</c> variables (<c>PEFT_HOME</c>) belong to other tools and are ignored, except a near miss of a
///   section name with a key (<c>PEFT_trainng__learning_rate</c>), which is reported as an unknown section.</item>
/// </list>
/// </summary>
public static class ConfigurationLayers
{
    /// <summary>Sections whose <c>name</c> picks a component; the other keys are that component's options.</summary>
    public static readonly IReadOnlyList<string> ComponentSections = ["method", "quantization", "optimizer"];

    /// <summary>One resolved layer: its keys (leaves only) and how to name it in an error message.</summary>
    public sealed class LayerProvider : ConfigurationProvider
    {
        readonly Func<string, string> _describe;

        public LayerProvider(IDictionary<string, string?> data, Func<string, string> describe)
        {
            _describe = describe;
            Data = new Dictionary<string, string?>(data, StringComparer.OrdinalIgnoreCase);
        }

        /// <summary>"configuration file '...'", "an environment variable PEFT_x...", "--set x..." for top-level key x.</summary>
        public string Describe(string topLevelKey) => _describe(topLevelKey);
    }

    /// <summary><c>PEFT_&lt;section&gt;__key=value</c> variables for known sections (and near misses, to be reported).</summary>
    public sealed class EnvironmentProvider(string prefix) : ConfigurationProvider
    {
        public override void Load()
        {
            var data = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
            foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            {
                var name = (string)e.Key;
                if (!name.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)) continue;
                var key = name[prefix.Length..].Replace("__", ConfigurationPath.KeyDelimiter, StringComparison.Ordinal);
                var section = key.Split(':')[0];
                bool known = ConfigSections.Find(section) is not null;
                bool nearMiss = !known && key.Contains(':') && ConfigSections.Known.Any(s => Distance(s.Name, section.ToLowerInvariant()) <= 2);
                if (known || nearMiss) data[key] = (string?)e.Value;
            }
            Data = data;
        }
    }

    public sealed class EnvironmentSource(string prefix) : IConfigurationSource
    {
        public IConfigurationProvider Build(IConfigurationBuilder builder) => new EnvironmentProvider(prefix);
    }

    /// <summary>The configuration with the rules above applied to the layers of <paramref name="root"/>, lowest first.</summary>
    public static IConfigurationRoot Resolve(IConfigurationRoot root, string environmentPrefix, string setOption)
    {
        var layers = root.Providers.Select(p => (Data: Flatten(p), Describe: Describer(p, environmentPrefix, setOption))).ToList();
        for (int i = 0; i < layers.Count; i++)
        {
            var data = layers[i].Data;
            var below = layers.Take(i).Select(l => l.Data).ToList();
            if (root.Providers.ElementAt(i) is not JsonConfigurationProvider) ExpandLists(data, below); // JSON has real lists
            foreach (var (key, value) in data.ToList())
            {
                var parts = key.Split(':');
                if (parts.Length >= 2 && int.TryParse(parts[^1], NumberStyles.None, CultureInfo.InvariantCulture, out _))
                {
                    var list = key[..key.LastIndexOf(':')];
                    foreach (var lower in below) RemoveTree(lower, list);
                }
                else
                {
                    foreach (var lower in below) RemoveTree(lower, key, keepRoot: true);
                }
                if (parts.Length == 2 && parts[1].Equals("name", StringComparison.OrdinalIgnoreCase) &&
                    ComponentSections.Contains(parts[0], StringComparer.OrdinalIgnoreCase))
                {
                    var previous = below.Select(l => l.TryGetValue(key, out var v) ? v : null).LastOrDefault(v => v is not null);
                    if (previous is not null && !string.Equals(previous, value, StringComparison.OrdinalIgnoreCase))
                        foreach (var lower in below) RemoveTree(lower, parts[0], keepRoot: true);
                }
            }
        }
        return new ConfigurationRoot(layers.Select(l => (IConfigurationProvider)new LayerProvider(l.Data, l.Describe)).ToList());
    }

    /// <summary>A further layer on top (e.g. <c>--plugins</c> folders appended to a list), kept as given.</summary>
    public static IConfigurationRoot Append(IConfigurationRoot root, IEnumerable<KeyValuePair<string, string?>> data, string description) =>
        new ConfigurationRoot([.. root.Providers, new LayerProvider(data.ToDictionary(), _ => description)]);

    /// <summary>
    /// Values of one list (the children of a node that are all indices 0, 1, ... holding plain strings) must be
    /// unique: <c>target_modules: [q_proj, v_proj, v_proj]</c> is refused naming the key and the repeated entry.
    /// Lists of numbers (betas, layer indices are checked by their options) are left alone.
    /// </summary>
    public static void RefuseDuplicateListEntries(IConfiguration node, string? path = null)
    {
        foreach (var child in node.GetChildren())
        {
            var childPath = path is null ? child.Key : path + ":" + child.Key;
            var items = child.GetChildren().ToList();
            if (items.Count > 1 && items.All(x => int.TryParse(x.Key, NumberStyles.None, CultureInfo.InvariantCulture, out _) && x.Value is not null && !x.GetChildren().Any()))
            {
                var strings = items.Select(x => x.Value!).Where(v => !double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out _)).ToList();
                var repeated = strings.GroupBy(v => v, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
                if (repeated is not null)
                    throw new PeftConfigurationException(childPath, "[" + string.Join(", ", items.Select(x => x.Value)) + "]",
                        $"lists '{repeated.Key}' {repeated.Count()} times; each entry may appear once");
                continue;
            }
            RefuseDuplicateListEntries(child, childPath);
        }
    }

    /// <summary>
    /// <c>key=[a, b]</c> (any layer) and <c>key=a,b</c> (where a lower layer holds a list at key) become the elements
    /// <c>key:0=a</c>, <c>key:1=b</c>. Quotes around an entry are dropped; <c>[]</c> is an empty list.
    /// </summary>
    static void ExpandLists(Dictionary<string, string?> data, List<Dictionary<string, string?>> below)
    {
        foreach (var (key, value) in data.ToList())
        {
            if (value is null) continue;
            var text = value.Trim();
            string? inner = text.Length >= 2 && text[0] == '[' && text[^1] == ']' ? text[1..^1]
                : text.Contains(',') && below.Any(l => l.Keys.Any(k => IsElementOf(k, key))) ? text
                : null;
            if (inner is null) continue;
            data.Remove(key);
            var entries = inner.Trim().Length == 0 ? [] : inner.Split(',').Select(e => e.Trim().Trim('"', '\'')).ToList();
            if (entries.Count == 0) data[key] = "";
            for (int i = 0; i < entries.Count; i++) data[$"{key}:{i}"] = entries[i];
        }
    }

    static bool IsElementOf(string candidate, string list) =>
        candidate.Length > list.Length + 1 && candidate.StartsWith(list + ":", StringComparison.OrdinalIgnoreCase) &&
        int.TryParse(candidate[(list.Length + 1)..].Split(':')[0], NumberStyles.None, CultureInfo.InvariantCulture, out _);

    static void RemoveTree(Dictionary<string, string?> data, string key, bool keepRoot = false)
    {
        foreach (var k in data.Keys.ToList())
            if ((!keepRoot && k.Equals(key, StringComparison.OrdinalIgnoreCase)) || k.StartsWith(key + ":", StringComparison.OrdinalIgnoreCase))
                data.Remove(k);
    }

    static Dictionary<string, string?> Flatten(IConfigurationProvider provider)
    {
        var data = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        void Walk(string? path)
        {
            foreach (var child in provider.GetChildKeys([], path).Distinct(StringComparer.OrdinalIgnoreCase))
            {
                var full = path is null ? child : ConfigurationPath.Combine(path, child);
                if (provider.TryGet(full, out var v) && v is not null) data[full] = v;
                Walk(full);
            }
        }
        Walk(null);
        return data;
    }

    static Func<string, string> Describer(IConfigurationProvider provider, string environmentPrefix, string setOption) => provider switch
    {
        LayerProvider layer => layer.Describe,
        JsonConfigurationProvider json => _ => $"configuration file '{json.Source.FileProvider?.GetFileInfo(json.Source.Path ?? "").PhysicalPath ?? json.Source.Path}'",
        EnvironmentProvider => key => $"an environment variable {environmentPrefix}{key}...",
        MemoryConfigurationProvider => key => $"{setOption} {key}...",
        _ => _ => provider.ToString() ?? "?",
    };

    /// <summary>Levenshtein distance (for "did you mean" near misses).</summary>
    public static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
