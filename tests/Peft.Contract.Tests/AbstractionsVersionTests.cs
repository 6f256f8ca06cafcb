using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Plugins;

namespace Peft.Contract.Tests;

/// <summary>
/// Versioning of the contracts (issue 15): tests/TestPlugins/OldContracts is compiled against Peft.Abstractions 0.0.1
/// (an older release of the same major version), tests/TestPlugins/NextMajor against 9.0.0
/// (tests/TestPlugins/Versions/*: the real IPeftPlugin source under those assembly versions).
/// </summary>
public class AbstractionsVersionTests
{
    static string TestPlugin(string name) => Path.Combine(AppContext.BaseDirectory, "testplugins", name);
    static string Assembly(string name) => Path.Combine(TestPlugin(name), $"Peft.TestPlugins.{name}.dll");

    [Fact]
    public void The_plugins_really_reference_other_versions_of_the_contracts()
    {
        AbstractionsCompatibility.HostVersion.Should().Be(typeof(Peft.Abstractions.Plugins.IPeftPlugin).Assembly.GetName().Version);
        AbstractionsCompatibility.ReferencedVersion(Assembly("OldContracts")).Should().Be(new Version(0, 0, 1, 0));
        AbstractionsCompatibility.ReferencedVersion(Assembly("NextMajor")).Should().Be(new Version(9, 0, 0, 0));
    }

    [Fact]
    public void A_plugin_built_against_an_older_compatible_version_loads()
    {
        using var catalog = PluginCatalog.Load([TestPlugin("OldContracts")]);
        catalog.Plugins.Select(p => p.Name).Should().Equal("oldcontracts");
    }

    [Fact]
    public void A_plugin_built_against_another_major_version_is_refused_naming_both_versions()
    {
        var host = AbstractionsCompatibility.HostVersion.ToString(3);
        var act = () => PluginCatalog.Load([TestPlugin("NextMajor")]);
        act.Should().Throw<PluginLoadException>()
            .WithMessage($"plugin '{Assembly("NextMajor")}': it was built against Peft.Abstractions 9.0.0, but this host provides Peft.Abstractions {host} (major versions 9 and {AbstractionsCompatibility.HostVersion.Major} are incompatible*");

        // through the CLI: one line, exit code 2, no stack trace
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CommandLine.Run(["plugins", "--plugins", TestPlugin("NextMajor")], new CliContext(stdout, stderr));
        code.Should().Be(2);
        stderr.ToString().Should().Contain("Peft.Abstractions 9.0.0").And.Contain($"Peft.Abstractions {host}");
        stderr.ToString().TrimEnd().Split('\n').Should().HaveCount(1);
    }

    [Theory]
    [InlineData("0.1.0", "0.1.0", true)]
    [InlineData("0.0.1", "0.1.0", true)]    // older minor: loads
    [InlineData("1.2.0", "1.4.3", true)]
    [InlineData("0.2.0", "0.1.0", false)]   // newer than the host: may use what the host lacks
    [InlineData("2.0.0", "1.9.0", false)]   // another major version
    [InlineData("1.0.0", "2.0.0", false)]
    public void Compatibility_is_same_major_and_no_newer_minor(string built, string host, bool compatible)
    {
        var reason = AbstractionsCompatibility.Incompatibility(Version.Parse(built), Version.Parse(host));
        (reason is null).Should().Be(compatible, reason);
        if (reason is not null) reason.Should().Contain($"Peft.Abstractions {built}").And.Contain($"Peft.Abstractions {host}");
    }
}
