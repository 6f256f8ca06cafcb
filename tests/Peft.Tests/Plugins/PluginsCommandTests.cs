using System.Diagnostics;
using System.Text.Json.Nodes;
using Peft.Host.Cli;
using static Peft.Tests.Plugins.PluginTestFolders;
using Peft.Host.Commands;

namespace Peft.Tests.Plugins;

public sealed class PluginsCommandTests
{
    static (int Code, string Out, string Err) Run(string baseDirectory, params string[] argv)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CommandLine.Run(argv, new CliContext(stdout, stderr) { BaseDirectory = baseDirectory });
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Json_lists_the_five_bundled_plugins()
    {
        var (code, output, error) = Run(AppContext.BaseDirectory, "plugins", "--json");

        code.Should().Be(0, error);
        var plugins = JsonNode.Parse(output)!.AsArray();
        plugins.Select(p => (string)p!["name"]!).Should().Equal("dora", "galore", "lisa", "lora", "qlora"); // sorted by name
        foreach (var (folder, name) in RealPlugins)
        {
            var p = plugins.Single(x => (string)x!["name"]! == name)!;
            ((string)p["assembly"]!).Should().Be(BundledAssembly(folder));
            ((string)p["version"]!).Should().Be(FileVersionInfo.GetVersionInfo(BundledAssembly(folder)).ProductVersion);
            ((string)p["description"]!).Should().NotBeEmpty();
            p["provides"]!.AsObject().Select(kv => kv.Key).Should().Equal("methods", "quantizers", "optimizer_strategies", "hooks");
        }
    }

    [Fact]
    public void Json_shows_what_an_extra_plugin_directory_provides()
    {
        var (code, output, error) = Run(AppContext.BaseDirectory, "plugins", "--json", "--set", $"plugins:directories:0={TestPlugin("Sample")}");

        code.Should().Be(0, error);
        var plugins = JsonNode.Parse(output)!.AsArray();
        plugins.Should().HaveCount(6);
        var sample = plugins.Single(p => (string)p!["name"]! == "sample")!;
        ((string)sample["assembly"]!).Should().Be(TestPluginAssembly("Sample"));
        var provides = sample["provides"]!;
        provides["methods"]!.AsArray().Select(n => (string)n!).Should().Equal("sample-method");
        provides["quantizers"]!.AsArray().Select(n => (string)n!).Should().Equal("sample-quantizer");
        provides["optimizer_strategies"]!.AsArray().Select(n => (string)n!).Should().Equal("sample-optimizer");
        provides["hooks"]!.AsArray().Select(n => (string)n!).Should().Equal("sample-hook");
    }

    [Fact]
    public void Text_lists_each_plugin_with_its_file_and_what_it_provides()
    {
        var (code, output, error) = Run(AppContext.BaseDirectory, "plugins", "--set", $"plugins:directories:0={TestPlugin("Sample")}");

        code.Should().Be(0, error);
        output.Should().Contain($"  assembly: {TestPluginAssembly("Sample")}\n  provides: methods: sample-method; quantizers: sample-quantizer; optimizer strategies: sample-optimizer; hooks: sample-hook\n");
        foreach (var (folder, name) in RealPlugins)
        {
            output.Should().Contain($"{name} {FileVersionInfo.GetVersionInfo(BundledAssembly(folder)).ProductVersion}\n");
            output.Should().Contain($"  assembly: {BundledAssembly(folder)}\n");
        }
    }

    [Fact]
    public void A_host_without_plugins_lists_none()
    {
        using var temp = new TempFolder();
        Run(temp.Path, "plugins", "--json").Should().Be((0, "[]\n", ""));
        Run(temp.Path, "plugins").Out.Should().StartWith("no plugins loaded");
    }

    [Fact]
    public void A_broken_plugin_is_exit_code_2_and_names_the_file()
    {
        using var temp = new TempFolder();
        var folder = Directory.CreateDirectory(temp.Sub("Broken")).FullName;
        File.WriteAllBytes(Path.Combine(folder, "Broken.dll"), new byte[] { 1, 2, 3, 4 });
        // "{}" made the runtime's native deps.json reader abort the whole process before the loader checked it
        File.WriteAllText(Path.Combine(folder, "Broken.deps.json"), "{}");

        var (code, output, error) = Run(AppContext.BaseDirectory, "plugins", "--set", $"plugins:directories:0={folder}");

        code.Should().Be(2);
        output.Should().BeEmpty();
        error.Should().Be($"peft plugins: error: plugin '{Path.Combine(folder, "Broken.dll")}': its dependency file '{Path.Combine(folder, "Broken.deps.json")}' is not a valid deps.json: it has no \"runtimeTarget\" object\n");
    }

    [Fact]
    public void A_missing_configured_directory_names_the_key_and_the_folder()
    {
        var (code, _, error) = Run(AppContext.BaseDirectory, "plugins", "--set", "plugins:directories:0=/no/such/folder");
        code.Should().Be(2);
        error.Should().Be("peft plugins: error: configuration key 'plugins:directories:0' has value '/no/such/folder': plugin folder does not exist (looked for '/no/such/folder')\n");
    }
}
