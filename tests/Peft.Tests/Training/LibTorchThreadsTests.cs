using Peft.Host.Training;

namespace Peft.Tests.Training;

public sealed class LibTorchThreadsTests
{
    /// <summary>A fake /sys/devices/system/cpu: CPU i on (package, core) of <paramref name="topology"/>[i]; offline CPUs marked.</summary>
    static string Tree((int Package, int Core)[] topology, params int[] offline)
    {
        var root = Directory.CreateTempSubdirectory("peft-cpu-").FullName;
        for (int i = 0; i < topology.Length; i++)
        {
            var dir = Path.Combine(root, $"cpu{i}", "topology");
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "physical_package_id"), $"{topology[i].Package}\n");
            File.WriteAllText(Path.Combine(dir, "core_id"), $"{topology[i].Core}\n");
            if (offline.Contains(i)) File.WriteAllText(Path.Combine(root, $"cpu{i}", "online"), "0\n");
        }
        Directory.CreateDirectory(Path.Combine(root, "cpufreq"));   // not a CPU
        return root;
    }

    [Fact]
    public void Hyper_threads_of_one_core_count_once()
    {
        // 2 packages × 2 cores × 2 hyper-threads = 8 logical CPUs, 4 physical cores
        var root = Tree([(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 0), (1, 1)]);
        LibTorchThreads.PhysicalCores(root, available: 8).Should().Be(4);
        LibTorchThreads.PhysicalCores(root, available: 4).Should().Be(2, "half the logical CPUs available: half the cores");
        Directory.Delete(root, true);
    }

    [Fact]
    public void Without_hyper_threads_every_online_cpu_is_a_core()
    {
        var root = Tree([(0, 0), (0, 1), (0, 2)], offline: 2);
        LibTorchThreads.PhysicalCores(root, available: 3).Should().Be(2, "cpu2 is offline");
        Directory.Delete(root, true);
    }

    [Fact]
    public void Without_a_topology_it_falls_back_to_the_processor_count()
    {
        LibTorchThreads.PhysicalCores("/nonexistent/cpu", available: 6).Should().Be(6);
    }

    [Theory]
    [InlineData(4, 0.0, 4)]
    [InlineData(4, 0.9, 4)]
    [InlineData(4, 1.2, 3)]
    [InlineData(2, 7.9, 1)]
    [InlineData(2, double.NaN, 2)]
    public void Busy_cores_are_left_to_the_processes_running_on_them(int cores, double load, int expected)
    {
        LibTorchThreads.Choose(cores, load).Should().Be(expected);
    }
}
