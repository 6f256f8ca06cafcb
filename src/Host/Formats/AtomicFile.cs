using System.Text;

namespace Peft.Host.Formats;

/// <summary>
/// Writes a file or a folder under a temporary name in the same directory and renames it into place, so a
/// crash or an error never leaves a half-written output under the real name.
/// </summary>
public static class AtomicFile
{
    public static void Write(string path, Action<FileStream> write)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    public static void WriteText(string path, string text) => Write(path, fs => fs.Write(Encoding.UTF8.GetBytes(text)));

    /// <summary>
    /// Build a whole folder atomically: <paramref name="fill"/> writes into a fresh temporary folder next to
    /// <paramref name="dir"/>, which then replaces <paramref name="dir"/> (an existing one is moved aside first
    /// and deleted only after the new one is in place).
    /// </summary>
    public static void WriteDirectory(string dir, Action<string> fill)
    {
        var full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        var tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
        }
        catch
        {
            TryDeleteDirectory(tmp);
            throw;
        }
        string? old = null;
        if (Directory.Exists(full))
        {
            old = Path.Combine(parent, $".{Path.GetFileName(full)}.old-{Guid.NewGuid():N}");
            Directory.Move(full, old);
        }
        Directory.Move(tmp, full);
        if (old is not null) TryDeleteDirectory(old);
    }

    static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static void TryDeleteDirectory(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
