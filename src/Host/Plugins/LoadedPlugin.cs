using System.Reflection;
using Peft.Abstractions.Plugins;

namespace Peft.Host.Plugins;

/// <summary>Names of what one plugin (or the host itself) registered, each list in registration order.</summary>
public sealed record ProvidedServices(
    IReadOnlyList<string> Methods,
    IReadOnlyList<string> Quantizers,
    IReadOnlyList<string> OptimizerStrategies,
    IReadOnlyList<string> Hooks)
{
    public static ProvidedServices None { get; } = new(Array.Empty<string>(), Array.Empty<string>(), Array.Empty<string>(), Array.Empty<string>());

    public bool IsEmpty => Methods.Count + Quantizers.Count + OptimizerStrategies.Count + Hooks.Count == 0;

    /// <summary>"methods: lora; quantizers: nf4" (kinds with nothing are left out).</summary>
    public override string ToString()
    {
        var parts = new List<string>();
        void Add(string kind, IReadOnlyList<string> names) { if (names.Count > 0) parts.Add($"{kind}: {string.Join(", ", names)}"); }
        Add("methods", Methods);
        Add("quantizers", Quantizers);
        Add("optimizer strategies", OptimizerStrategies);
        Add("hooks", Hooks);
        return parts.Count == 0 ? "nothing" : string.Join("; ", parts);
    }
}

/// <summary>A plugin the host loaded: who it is, where it came from, and what it registered.</summary>
public sealed class LoadedPlugin
{
    internal LoadedPlugin(IPeftPlugin instance, Assembly assembly, string assemblyPath, string version)
    {
        Instance = instance;
        Assembly = assembly;
        AssemblyPath = assemblyPath;
        Version = version;
        Name = instance.Name;
        Description = instance.Description ?? "";
    }

    /// <summary><see cref="IPeftPlugin.Name"/>, e.g. "lora".</summary>
    public string Name { get; }

    /// <summary>The assembly's informational version (<c>0.1.0+commit</c>), else its assembly version.</summary>
    public string Version { get; }

    public string Description { get; }

    /// <summary>Full path of the plugin's main assembly.</summary>
    public string AssemblyPath { get; }

    public ProvidedServices Provides { get; internal set; } = ProvidedServices.None;

    /// <summary>The plugin's entry point (the host's <see cref="IPeftPlugin"/> type: contracts are shared).</summary>
    public IPeftPlugin Instance { get; }

    /// <summary>The plugin's main assembly, loaded in its own load context.</summary>
    public Assembly Assembly { get; }

    public override string ToString() => $"{Name} {Version} ({AssemblyPath})";
}
