using System.Diagnostics;
using System.Text.Json.Nodes;
using Peft.Tests.Import;
using Peft.Tests.Reliability;

namespace Peft.Tests.Distributed;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DistributedCollection : ICollectionFixture<Stories260KFixture>
{
    public const string Name = "Distributed (mpiexec)";
}

/// <summary>
/// <c>mpiexec.mpich -n N dotnet peft.dll ...</c> as a child process. MPICH is installed by <c>.ci/install-mpich</c>
/// (which <c>.ci/run</c> calls); without it these tests fail saying so, on CI and locally alike (never a silent skip).
/// </summary>
public static class MpiRun
{
    public static string Mpiexec
    {
        get
        {
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
                if (File.Exists(Path.Combine(dir, "mpiexec.mpich"))) return Path.Combine(dir, "mpiexec.mpich");
            throw new InvalidOperationException("MPICH's mpiexec.mpich is not installed: run .ci/install-mpich (CI runs it before the tests" +
                                                (Environment.GetEnvironmentVariable("CI") == "true" ? "; CI=true and it is missing" : "") + ")");
        }
    }

    public static ProcessStartInfo StartInfo(int ranks, string work, IEnumerable<string> args)
    {
        var psi = PeftProcess.StartInfo(work, args);
        psi.FileName = Mpiexec;
        psi.ArgumentList.Insert(0, "dotnet");
        psi.ArgumentList.Insert(0, ranks.ToString(System.Globalization.CultureInfo.InvariantCulture));
        psi.ArgumentList.Insert(0, "-n");
        return psi;
    }

    public static PeftProcess.Result Run(int ranks, string work, params string[] args)
    {
        using var p = Process.Start(StartInfo(ranks, work, args))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"mpiexec -n {ranks} peft {string.Join(' ', args)} did not finish in time");
        }
        p.WaitForExit();
        return new PeftProcess.Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>(step, loss) of the training lines of metrics.jsonl.</summary>
    public static List<(int Step, double Loss)> Losses(string output) =>
        File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!)
            .Where(n => n["loss"] is not null).Select(n => (n["step"]!.GetValue<int>(), n["loss"]!.GetValue<double>())).ToList();

    /// <summary>(step, grad_norm) of the training lines of metrics.jsonl (the global norm before clipping).</summary>
    public static List<(int Step, double Norm)> GradNorms(string output) =>
        File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!)
            .Where(n => n["grad_norm"] is not null).Select(n => (n["step"]!.GetValue<int>(), n["grad_norm"]!.GetValue<double>())).ToList();

    /// <summary>"rank R: optimizer state held N bytes" from a rank's output.</summary>
    public static long OptimizerBytes(string text, int rank)
    {
        var m = System.Text.RegularExpressions.Regex.Match(text, $@"rank {rank}: optimizer state held (\d+) bytes");
        m.Success.Should().BeTrue($"rank {rank} reports its optimizer state:\n{text}");
        return long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }
}
