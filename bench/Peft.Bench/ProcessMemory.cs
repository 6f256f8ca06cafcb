using System.Globalization;

namespace Peft.Bench;

/// <summary>Resident memory of this process from /proc/self/status (Linux): VmRSS now, VmHWM = its peak so far.</summary>
public static class ProcessMemory
{
    public static long CurrentRssBytes() => Read("VmRSS:");

    public static long PeakRssBytes() => Read("VmHWM:");

    static long Read(string field)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) throw new PlatformNotSupportedException($"{status} is missing: the bench measures memory on Linux only");
        foreach (var line in File.ReadLines(status))
        {
            if (!line.StartsWith(field, StringComparison.Ordinal)) continue;
            // "VmHWM:	  123456 kB"
            var parts = line[field.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && parts[1] == "kB" && long.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out long kb))
                return kb * 1024;
            throw new FormatException($"{status}: cannot read '{line}'");
        }
        throw new FormatException($"{status} has no {field} line");
    }
}
