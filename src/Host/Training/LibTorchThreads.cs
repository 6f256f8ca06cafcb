using System.Globalization;
using TorchSharp;

namespace Peft.Host.Training;

/// <summary>
/// LibTorch's intra-op thread count. LibTorch (OpenMP) starts one thread per logical CPU; on a machine with
/// hyper-threads two threads then share each core's floating-point units and wait on each other at every
/// parallel region, which costs more than it gives for matmul-bound training (docs/benchmarks.md, "Threads").
/// The default is therefore one thread per physical core this process may run on and no other process is
/// busy on (<see cref="Default"/>); <c>training:num_threads</c> overrides it.
/// </summary>
public static class LibTorchThreads
{
    /// <summary>Set LibTorch's thread count: <paramref name="configured"/> when positive, else <see cref="Default"/>. Returns it.</summary>
    public static int Apply(int configured = 0)
    {
        int threads = configured > 0 ? configured : Default();
        if (torch.get_num_threads() != threads) torch.set_num_threads(threads);
        return threads;
    }

    /// <summary>
    /// One thread per physical core that other processes are not already running on:
    /// <c>clamp(physical cores − ⌊1-minute load average⌋, 1, physical cores)</c>. OpenMP's threads wait for each other
    /// at every parallel region, so a thread whose core is taken by another process stalls all of them: on this
    /// project's shared 2-core machine the quickstart ran 8883 tokens/s on 1 thread and 1334 on 2 under load, but
    /// 15532 on 2 when the machine was idle (docs/benchmarks.md, "Threads").
    /// </summary>
    public static int Default() => Choose(PhysicalCores(), LoadAverage());

    /// <summary>The rule of <see cref="Default"/>, for given cores and load.</summary>
    public static int Choose(int physicalCores, double loadAverage)
    {
        int busy = double.IsFinite(loadAverage) && loadAverage > 0 ? (int)Math.Floor(loadAverage) : 0;
        return Math.Clamp(physicalCores - busy, 1, Math.Max(1, physicalCores));
    }

    /// <summary>The 1-minute load average (/proc/loadavg), or 0 where it cannot be read.</summary>
    public static double LoadAverage()
    {
        try
        {
            var first = File.ReadAllText("/proc/loadavg").Split(' ')[0];
            return double.TryParse(first, NumberStyles.Float, CultureInfo.InvariantCulture, out var load) ? load : 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 0; }
    }

    /// <summary>
    /// Physical cores among the CPUs this process may use: distinct (package, core) pairs of the online CPUs in
    /// /sys/devices/system/cpu (Linux), at most <see cref="Environment.ProcessorCount"/> (the affinity mask and
    /// cgroup quota .NET sees). Elsewhere, or when the topology cannot be read: ProcessorCount.
    /// </summary>
    public static int PhysicalCores() => PhysicalCores("/sys/devices/system/cpu", Environment.ProcessorCount);

    /// <summary>Testable core: the topology under <paramref name="cpuRoot"/>, capped at <paramref name="available"/>.</summary>
    public static int PhysicalCores(string cpuRoot, int available)
    {
        try
        {
            if (!Directory.Exists(cpuRoot)) return Math.Max(1, available);
            var cores = new HashSet<(string, string)>();
            int logical = 0;
            foreach (var dir in Directory.EnumerateDirectories(cpuRoot, "cpu*"))
            {
                var name = Path.GetFileName(dir);
                if (!int.TryParse(name.AsSpan(3), NumberStyles.None, CultureInfo.InvariantCulture, out _)) continue;
                var online = Path.Combine(dir, "online");
                if (File.Exists(online) && File.ReadAllText(online).Trim() == "0") continue;
                var topology = Path.Combine(dir, "topology");
                var package = Path.Combine(topology, "physical_package_id");
                var core = Path.Combine(topology, "core_id");
                if (!File.Exists(package) || !File.Exists(core)) continue;
                cores.Add((File.ReadAllText(package).Trim(), File.ReadAllText(core).Trim()));
                logical++;
            }
            if (cores.Count == 0) return Math.Max(1, available);
            // With fewer CPUs available than online (affinity, cgroup quota), assume they spread over the cores
            // the same way: available × cores / logical, at least 1.
            int physical = logical <= available ? cores.Count : Math.Max(1, (int)Math.Round((double)available * cores.Count / logical));
            return Math.Clamp(physical, 1, Math.Max(1, available));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return Math.Max(1, available); }
    }
}
