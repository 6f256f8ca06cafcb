namespace Peft.Host.Plugins;

/// <summary>
/// Finds plugin main assemblies on disk. A <b>plugin folder</b> holds its main assembly <c>X.dll</c> next to
/// <c>X.deps.json</c> (what <c>dotnet build</c> of a plugin project produces), plus its private dependencies.
/// Each searched directory is either a plugin folder itself, or a folder whose sub-folders are all plugin
/// folders (like the host's <c>plugins/</c>: <c>plugins/Lora/Peft.Plugins.Lora.dll</c>). Nothing is compiled
/// in: copying a plugin folder into a searched directory is enough.
/// </summary>
public static class PluginDiscovery
{
    /// <summary>
    /// Main assembly paths (full paths), directory by directory in the given order, sub-folders in ordinal
    /// order; a folder reached twice is listed once.
    /// </summary>
    /// <param name="directories">Folders to search. Every one must exist, except those listed in <paramref name="optionalDirectories"/>.</param>
    /// <param name="optionalDirectories">Folders that may be absent (the host's default <c>plugins/</c>).</param>
    public static IReadOnlyList<string> FindPluginAssemblies(IEnumerable<string> directories, IEnumerable<string>? optionalDirectories = null)
    {
        var optional = new HashSet<string>((optionalDirectories ?? Array.Empty<string>()).Select(Normalize), PathComparer);
        var result = new List<string>();
        var seen = new HashSet<string>(PathComparer);
        foreach (var directory in directories)
        {
            var dir = Normalize(directory);
            if (!Directory.Exists(dir))
            {
                if (optional.Contains(dir)) continue;
                throw new PluginLoadException(dir, "plugin directory does not exist");
            }
            var own = MainAssemblyOf(dir);
            IEnumerable<string> found;
            if (own is not null)
                found = new[] { own };
            else
                found = Directory.GetDirectories(dir)
                    .Where(d => !Path.GetFileName(d).StartsWith('.'))
                    .Order(StringComparer.Ordinal)
                    .Select(d => MainAssemblyOf(d) ?? throw new PluginLoadException(d,
                        $"not a plugin folder: no X.dll next to X.deps.json (it is a sub-folder of the plugin directory '{dir}'; every sub-folder there must be one plugin)"));
            foreach (var assembly in found)
                if (seen.Add(assembly)) result.Add(assembly);
        }
        return result;
    }

    /// <summary>
    /// The main assembly of a plugin folder: the single <c>X.dll</c> with an <c>X.deps.json</c> beside it, or
    /// null if there is none. Two such pairs are an error (which one would be the plugin?).
    /// </summary>
    public static string? MainAssemblyOf(string folder)
    {
        var candidates = Directory.GetFiles(folder, "*.deps.json")
            .Select(deps => deps[..^".deps.json".Length] + ".dll")
            .Where(File.Exists)
            .Order(StringComparer.Ordinal)
            .ToList();
        return candidates.Count switch
        {
            0 => null,
            1 => candidates[0],
            _ => throw new PluginLoadException(folder,
                $"several assemblies have a deps.json here ({string.Join(", ", candidates.Select(Path.GetFileName))}); a plugin folder holds exactly one plugin"),
        };
    }

    static string Normalize(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

    static StringComparer PathComparer => OperatingSystem.IsWindows() ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;
}
