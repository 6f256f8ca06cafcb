using System.Diagnostics;

namespace Peft.Tests.Reliability;

/// <summary>
/// The real <c>peft</c> executable (the host built beside the tests, with its plugins) run as a child process:
/// its exit code, stdout and stderr, in a working directory of the test's choosing.
/// </summary>
public static class PeftProcess
{
    public static string HostDll => Path.Combine(AppContext.BaseDirectory, "peft.dll");

    public sealed record Result(int Code, string Out, string Err)
    {
        public override string ToString() => $"exit {Code}\n--- stdout ---\n{Out}\n--- stderr ---\n{Err}";
    }

    public static ProcessStartInfo StartInfo(string workingDirectory, IEnumerable<string> args, IDictionary<string, string?>? environment = null)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(HostDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        // keep the child deterministic and quiet: no ambient PEFT_* configuration from the test runner
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("PEFT_", StringComparison.OrdinalIgnoreCase)).ToList())
            psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        if (environment is not null)
            foreach (var (k, v) in environment) psi.Environment[k] = v;
        return psi;
    }

    /// <summary>Runs <c>peft args...</c> to completion (or kills it after <paramref name="timeout"/> and fails).</summary>
    public static Result Run(string workingDirectory, IEnumerable<string> args, IDictionary<string, string?>? environment = null, TimeSpan? timeout = null)
    {
        using var p = Process.Start(StartInfo(workingDirectory, args, environment))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"peft {string.Join(' ', args)} did not finish in time");
        }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static Result Run(string workingDirectory, params string[] args) => Run(workingDirectory, (IEnumerable<string>)args);

    /// <summary>Copies a folder (files and sub-folders) to a new location.</summary>
    public static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (var dir in Directory.GetDirectories(from)) CopyDirectory(dir, Path.Combine(to, Path.GetFileName(dir)));
    }
}
