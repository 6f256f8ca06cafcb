using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using Peft.Abstractions.Plugins;

namespace Peft.Host.Plugins;

/// <summary>
/// Which Peft.Abstractions a plugin was compiled against, read from its assembly's metadata BEFORE it is loaded, and
/// whether this host can run it. The contracts follow semantic versioning: a plugin built against the same major
/// version and an equal or older minor version loads (the host's newer contracts still hold everything it uses);
/// a different major version, or a newer minor one than the host's, is refused with a message naming both
/// versions, instead of the type-load error the runtime would otherwise raise half-way through loading.
/// </summary>
public static class AbstractionsCompatibility
{
    public const string AssemblyName = "Peft.Abstractions";

    /// <summary>The version of the contracts this host provides (the assembly version of Peft.Abstractions).</summary>
    public static Version HostVersion { get; } = typeof(IPeftPlugin).Assembly.GetName().Version ?? new Version(0, 0, 0, 0);

    /// <summary>The Peft.Abstractions version the assembly references, or null if it references none.</summary>
    public static Version? ReferencedVersion(string assemblyPath)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        if (!pe.HasMetadata) return null;
        var reader = pe.GetMetadataReader();
        foreach (var handle in reader.AssemblyReferences)
        {
            var reference = reader.GetAssemblyReference(handle);
            if (reader.StringComparer.Equals(reference.Name, AssemblyName))
                return reference.Version;
        }
        return null;
    }

    /// <summary>Null when a plugin built against <paramref name="built"/> runs on <paramref name="host"/>, else why not.</summary>
    public static string? Incompatibility(Version built, Version host)
    {
        if (built.Major != host.Major)
            return $"it was built against {AssemblyName} {Show(built)}, but this host provides {AssemblyName} {Show(host)} " +
                   $"(major versions {built.Major} and {host.Major} are incompatible; rebuild the plugin against {AssemblyName} {host.Major}.x)";
        if (built.Minor > host.Minor)
            return $"it was built against {AssemblyName} {Show(built)}, which is newer than the {AssemblyName} {Show(host)} this host provides " +
                   $"(update the host, or rebuild the plugin against {AssemblyName} {Show(host)})";
        return null;
    }

    /// <summary>Throws <see cref="PluginLoadException"/> when the plugin at <paramref name="assemblyPath"/> cannot run on this host.</summary>
    public static void Check(string assemblyPath)
    {
        Version? built;
        try
        {
            built = ReferencedVersion(assemblyPath);
        }
        catch (Exception e) when (e is BadImageFormatException or IOException or InvalidOperationException)
        {
            return; // not a readable assembly: loading it reports that (naming the file)
        }
        if (built is null) return; // the entry point check reports a plugin that does not use the contracts
        if (Incompatibility(built, HostVersion) is { } reason)
            throw new PluginLoadException(assemblyPath, reason);
    }

    /// <summary>"1.2.0" (the revision is left out when it is 0).</summary>
    static string Show(Version v) => v.Revision > 0 ? v.ToString() : v.ToString(3);
}
