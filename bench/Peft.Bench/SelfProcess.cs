using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace Peft.Bench;

/// <summary>
/// Runs this bench executable again as a fresh child process (or as <paramref name="ranks"/> MPI ranks under MPICH's
/// mpiexec), so each measurement starts from an empty heap, and reads the last measurement line the child prints.
/// </summary>
static class SelfProcess
{
    public sealed record Outcome(Measurement? Measurement, int ExitCode, string Stdout, string Stderr)
    {
        public bool Succeeded => ExitCode == 0 && Measurement is not null;
    }

    public static Outcome Run(IEnumerable<string> arguments, int ranks = 1)
    {
        var self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this executable's path");
        var start = new ProcessStartInfo { FileName = self, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (ranks > 1)
        {
            start.FileName = "mpiexec.mpich";
            start.ArgumentList.Add("-n");
            start.ArgumentList.Add(ranks.ToString(CultureInfo.InvariantCulture));
            start.ArgumentList.Add(self);
        }
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") // started as `dotnet Peft.Bench.dll`
            start.ArgumentList.Add(Assembly.GetEntryAssembly()!.Location);
        foreach (var a in arguments) start.ArgumentList.Add(a);

        using var child = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}");
        var stderr = child.StandardError.ReadToEndAsync();
        var stdout = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        var measurement = stdout.Split('\n').Select(l => Measurement.FromLine(l.TrimEnd('\r'))).LastOrDefault(m => m is not null);
        return new Outcome(measurement, child.ExitCode, stdout, stderr.Result);
    }
}
