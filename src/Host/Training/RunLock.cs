using System.Diagnostics;
using System.Globalization;
using Peft.Abstractions;

namespace Peft.Host.Training;

/// <summary>
/// One run per output folder: <c>{output}/.peft-train.lock</c>, opened exclusively (the operating system's lock on
/// the open file, released when the process ends however it ends) and holding the owner's process id and start time.
/// A second <c>peft train</c> on the same folder is refused with a line naming the owner. A lock file left behind by
/// a process that no longer runs (its PID is gone, or the file is not locked) is stale and taken over. Disposing
/// releases the lock and deletes the file (and the output folder, if the lock created it and it is still empty).
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = ".peft-train.lock";

    readonly FileStream _stream;
    readonly string _path;
    readonly string? _createdDirectory;

    RunLock(FileStream stream, string path, string? createdDirectory)
    {
        _stream = stream;
        _path = path;
        _createdDirectory = createdDirectory;
    }

    /// <summary>A note when a stale lock of a dead process was taken over, else null.</summary>
    public string? StaleNote { get; private init; }

    public static RunLock Acquire(string outputDirectory)
    {
        string? created = Directory.Exists(outputDirectory) ? null : outputDirectory;
        Directory.CreateDirectory(outputDirectory);
        var path = Path.Combine(outputDirectory, FileName);
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            // locked by a live process (the OS lock is released when its owner exits)
            throw new PeftConfigurationException("output:dir", outputDirectory,
                $"is in use by another peft train ({Describe(ReadOwner(path))}); wait for it to finish, or choose another output:dir");
        }

        string? note = null;
        try
        {
            var previous = ReadOwner(stream);
            if (previous is { } owner && owner.Pid != Environment.ProcessId)
            {
                if (IsAlive(owner))
                {
                    // the file is not locked but its owner runs: locking is not enforced here (e.g. a network file
                    // system), so trust the PID
                    throw new PeftConfigurationException("output:dir", outputDirectory,
                        $"is in use by another peft train ({Describe(owner)}); wait for it to finish, or choose another output:dir");
                }
                note = $"note: took over a stale lock of {Describe(owner)}, which is no longer running";
            }
            stream.SetLength(0);
            using (var writer = new StreamWriter(stream, leaveOpen: true))
                writer.Write(string.Create(CultureInfo.InvariantCulture,
                    $"{Environment.ProcessId} {Process.GetCurrentProcess().StartTime.ToUniversalTime():O}\n"));
            stream.Flush(flushToDisk: true);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
        return new RunLock(stream, path, created) { StaleNote = note };
    }

    public void Dispose()
    {
        try { File.Delete(_path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        _stream.Dispose();
        if (_createdDirectory is not null)
        {
            try
            {
                if (Directory.Exists(_createdDirectory) && !Directory.EnumerateFileSystemEntries(_createdDirectory).Any())
                    Directory.Delete(_createdDirectory);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    readonly record struct Owner(int Pid, DateTime? StartedUtc);

    /// <summary>
    /// The owner recorded in a lock file another process holds. .NET's own file APIs take a shared lock to read on
    /// Unix, which the holder's exclusive lock refuses, so the bytes are read with plain open/read.
    /// </summary>
    static Owner? ReadOwner(string path)
    {
        if (OperatingSystem.IsWindows()) return null;
        try
        {
            int fd = Native.open(path, 0 /* O_RDONLY */);
            if (fd < 0) return null;
            try
            {
                var buffer = new byte[128];
                var n = Native.read(fd, buffer, buffer.Length);
                return n <= 0 ? null : Parse(System.Text.Encoding.ASCII.GetString(buffer, 0, (int)n));
            }
            finally { Native.close(fd); }
        }
        catch (DllNotFoundException) { return null; }
        catch (EntryPointNotFoundException) { return null; }
    }

    static class Native
    {
        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)] public static extern int open(string path, int flags);
        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)] public static extern nint read(int fd, byte[] buffer, nint count);
        [System.Runtime.InteropServices.DllImport("libc")] public static extern int close(int fd);
    }

    static Owner? ReadOwner(FileStream s)
    {
        s.Position = 0;
        return Parse(new StreamReader(s, leaveOpen: true).ReadToEnd());
    }

    static Owner? Parse(string content)
    {
        var text = content.Trim();
        var parts = text.Split(' ', 2, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var pid)) return null;
        DateTime? started = parts.Length > 1 && DateTime.TryParse(parts[1], CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var t) ? t.ToUniversalTime() : null;
        return new Owner(pid, started);
    }

    /// <summary>The process runs and (when the lock recorded it) started when the owner did: a reused PID is not the owner.</summary>
    static bool IsAlive(Owner owner)
    {
        try
        {
            using var p = Process.GetProcessById(owner.Pid);
            if (p.HasExited) return false;
            if (owner.StartedUtc is { } started && Math.Abs((p.StartTime.ToUniversalTime() - started).TotalSeconds) > 2) return false;
            return true;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    static string Describe(Owner? owner) => owner is { } o
        ? string.Create(CultureInfo.InvariantCulture, $"pid {o.Pid}{(o.StartedUtc is { } t ? $", started {t:yyyy-MM-dd HH:mm:ss} UTC" : "")}")
        : "lock file " + FileName;
}
