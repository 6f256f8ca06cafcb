namespace Peft.Host.Formats;

/// <summary>Comparing folders by what they are on disk, for "is, contains or is inside" checks.</summary>
public static class FolderPaths
{
    /// <summary>The canonical absolute path: full, symbolic links resolved component by component, no trailing separator.</summary>
    public static string RealPath(string path)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        var root = Path.GetPathRoot(full)!;
        var current = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            current = Path.Combine(current, part);
            for (int hops = 0; hops < 40; hops++)
            {
                FileSystemInfo info = Directory.Exists(current) ? new DirectoryInfo(current) : new FileInfo(current);
                if (!info.Exists || info.LinkTarget is null) break;
                current = Path.TrimEndingDirectorySeparator(Path.GetFullPath(info.LinkTarget, Path.GetDirectoryName(current)!));
            }
        }
        return current;
    }

    /// <summary>Whether real path <paramref name="inner"/> lies strictly inside real path <paramref name="outer"/>.</summary>
    public static bool IsInside(string inner, string outer) =>
        inner.Length > outer.Length && inner.StartsWith(outer, StringComparison.Ordinal) &&
        (outer.EndsWith(Path.DirectorySeparatorChar) || inner[outer.Length] == Path.DirectorySeparatorChar);
}
