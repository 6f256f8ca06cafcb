using System.Diagnostics;
using Peft.Host.Import;
using Peft.Testing;

namespace Peft.Contract.Tests.Sdk;

/// <summary>
/// Once per test run, what a third-party author does, from the outside: pack the SDK (Peft.Abstractions,
/// Peft.ContractKit, Peft.Templates) into a fresh local folder feed under a version no earlier run used, install the
/// template into a private template hive, instantiate <c>dotnet new peft-method -n Scaler</c> into a temporary
/// folder, build it and run its contract tests, and build the IA³ sample (a copy of samples/Ia3) — both against the
/// feed alone (a NuGet.config in each folder; the packages they restore go to a private packages folder, with the
/// machine's package cache as a read-only fallback, so a stale cached copy of the SDK is never used). The plugins'
/// build outputs are dropped into a temporary plugin folder for the host.
/// </summary>
public sealed class SdkFixture : IDisposable
{
#if DEBUG
    public const string Configuration = "Debug";
#else
    public const string Configuration = "Release";
#endif

    public SdkFixture()
    {
        Root = Directory.CreateTempSubdirectory("peft-sdk-").FullName;
        // semver pre-release: unique per run, so no package cache anywhere can hold an older build of it
        Version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        Feed = Path.Combine(Root, "feed");
        PluginsDir = Path.Combine(Root, "plugins");
        var packages = Path.Combine(Root, "packages");

        foreach (var project in new[] { "src/Abstractions", "src/ContractKit" })
            Log += Dotnet(TestData.RepoRoot, "pack", project, "-c", Configuration, "--no-build", "-o", Feed, $"-p:Version={Version}");
        Log += Dotnet(TestData.RepoRoot, "pack", "templates/Peft.Templates.csproj", "-c", Configuration, "-o", Feed, $"-p:Version={Version}");

        // the template, from its package, into a private hive (the user's templates stay untouched)
        var hive = Path.Combine(Root, "hive");
        Log += Dotnet(Root, "new", "install", Package("Peft.Templates"), "--debug:custom-hive", hive);
        GeneratedDir = Path.Combine(Root, "generated", "Scaler");
        Log += Dotnet(Root, "new", "peft-method", "-n", "Scaler", "-o", GeneratedDir, "--debug:custom-hive", hive);
        WriteNuGetConfig(GeneratedDir, packages);
        Log += Dotnet(GeneratedDir, "build", "tests/Scaler.Tests", "-c", "Release");
        GeneratedTestOutput = Dotnet(GeneratedDir, "test", "tests/Scaler.Tests", "-c", "Release", "--no-build");
        CopyDirectory(Path.Combine(GeneratedDir, "src", "Scaler", "bin", "Release"), ScalerPlugin);

        // the IA³ sample: a copy of samples/Ia3 (its own NuGet.config replaced), the plugin only
        Ia3SourceDir = Path.Combine(Root, "samples", "Ia3");
        CopyDirectory(Path.Combine(TestData.RepoRoot, "samples", "Ia3"), Ia3SourceDir, skip: d => d is "bin" or "obj");
        WriteNuGetConfig(Ia3SourceDir, packages);
        Log += Dotnet(Ia3SourceDir, "build", "src/Ia3", "-c", "Release", $"-p:PeftSdkVersion={Version}");
        CopyDirectory(Path.Combine(Ia3SourceDir, "src", "Ia3", "bin", "Release"), Ia3Plugin);

        ModelDir = Path.Combine(Root, "models", "stories260K");
        Llama2cImporter.Import(TestData.Repo("stories260K/stories260K.bin"), TestData.Repo("stories260K/tok512.model"), ModelDir);
    }

    public string Root { get; }
    public string Version { get; }
    public string Feed { get; }
    public string PluginsDir { get; }
    public string ScalerPlugin => Path.Combine(PluginsDir, "Scaler");
    public string Ia3Plugin => Path.Combine(PluginsDir, "Ia3");
    public string GeneratedDir { get; }
    public string Ia3SourceDir { get; }
    public string ModelDir { get; }
    public string GeneratedTestOutput { get; }
    public string Log { get; } = "";

    /// <summary>The .nupkg of a package in the feed.</summary>
    public string Package(string id) => Path.Combine(Feed, $"{id}.{Version}.nupkg");

    /// <summary>A fresh folder under the fixture's root.</summary>
    public string NewDir(string name) => Path.Combine(Root, "runs", $"{name}-{Guid.NewGuid():N}");

    /// <summary>Restore from the local feed and the registry; packages into a private folder, the machine's cache read-only.</summary>
    void WriteNuGetConfig(string dir, string packages)
    {
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.WriteAllText(Path.Combine(dir, "NuGet.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <config><add key="globalPackagesFolder" value="{packages}" /></config>
              <fallbackPackageFolders><add key="machine" value="{cache}" /></fallbackPackageFolders>
              <packageSources>
                <clear />
                <add key="peft-local" value="{Feed}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
            </configuration>
            """);
    }

    /// <summary>Run <c>dotnet args</c> in <paramref name="workingDirectory"/>; a failure throws with its output.</summary>
    public static string Dotnet(string workingDirectory, params string[] args)
    {
        // niced: these builds run beside the other test assemblies and must not starve their timing-sensitive tests
        bool nice = File.Exists("/usr/bin/nice");
        var start = new ProcessStartInfo(nice ? "/usr/bin/nice" : "dotnet") { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        if (nice) foreach (var a in new[] { "-n", "15", "dotnet" }) start.ArgumentList.Add(a);
        foreach (var a in args) start.ArgumentList.Add(a);
        if (args[0] is "build" or "pack") { start.ArgumentList.Add("-nodeReuse:false"); start.ArgumentList.Add("-maxCpuCount:1"); }
        // what the outer `dotnet test` set for itself would redirect the inner MSBuild
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || k.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)).ToList())
            start.Environment.Remove(key);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(8)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet {string.Join(' ', args)} did not finish in 8 minutes:\n{stdout.Result}\n{stderr.Result}");
        }
        var output = $"$ dotnet {string.Join(' ', args)}\n{stdout.Result}{stderr.Result}\n";
        if (process.ExitCode != 0) throw new InvalidOperationException($"exit code {process.ExitCode} from\n{output}");
        return output;
    }

    static void CopyDirectory(string from, string to, Func<string, bool>? skip = null)
    {
        if (!Directory.Exists(from)) throw new DirectoryNotFoundException($"'{from}' was not built");
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        foreach (var dir in Directory.GetDirectories(from))
            if (skip?.Invoke(Path.GetFileName(dir)) != true) CopyDirectory(dir, Path.Combine(to, Path.GetFileName(dir)), skip);
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
