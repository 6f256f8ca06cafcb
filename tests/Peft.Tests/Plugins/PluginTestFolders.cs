namespace Peft.Tests.Plugins;

/// <summary>Where the test project's build put the plugins, and temp folders to build plugin layouts in.</summary>
static class PluginTestFolders
{
    /// <summary>The five real plugins, copied here by build/BundlePlugins.targets.</summary>
    public static string Bundled => Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>Folder → plugin name of the five real plugins.</summary>
    public static readonly IReadOnlyDictionary<string, string> RealPlugins = new Dictionary<string, string>
    {
        ["Dora"] = "dora", ["GaLore"] = "galore", ["Lisa"] = "lisa", ["Lora"] = "lora", ["QLora"] = "qlora",
    };

    public static string BundledAssembly(string folder) => Path.Combine(Bundled, folder, $"Peft.Plugins.{folder}.dll");

    /// <summary>A test-only plugin folder (tests/TestPlugins/NAME), copied by build/BundleTestPlugins.targets.</summary>
    public static string TestPlugin(string name) => Path.Combine(AppContext.BaseDirectory, "testplugins", name);

    public static string TestPluginAssembly(string name) => Path.Combine(TestPlugin(name), $"Peft.TestPlugins.{name}.dll");

    public static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }
}

/// <summary>A fresh temp folder, deleted at the end of the test.</summary>
sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateDirectory(System.IO.Path.Combine(System.IO.Path.GetTempPath(), "peft-plugins-" + Guid.NewGuid().ToString("N"))).FullName;

    public string Sub(params string[] parts) => System.IO.Path.Combine(new[] { Path }.Concat(parts).ToArray());

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
