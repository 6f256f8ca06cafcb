using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Plugins;

namespace Peft.Tests.Configuration;

/// <summary>Tests that set PEFT_* environment variables run alone: every configuration load reads them.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessEnvironmentCollection
{
    public const string Name = "process environment";
}

[Collection(ProcessEnvironmentCollection.Name)]
public sealed class HostConfigurationTests : IDisposable
{
    readonly string _dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "peft-config-" + Guid.NewGuid().ToString("N"))).FullName;
    readonly List<string> _variables = new();

    string Json(string text, string name = "run.json")
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    void Env(string name, string value)
    {
        _variables.Add(name);
        Environment.SetEnvironmentVariable(name, value);
    }

    public void Dispose()
    {
        foreach (var v in _variables) Environment.SetEnvironmentVariable(v, null);
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void Json_then_environment_then_set_each_override_the_previous_and_a_list_replaces_the_list_below()
    {
        var file = Json("""{ "plugins": { "directories": [ "json-0", "json-1", "json-2" ] }, "training": { "seed": 1, "batch_size": 2 } }""");
        Env("PEFT_plugins__directories__0", "env-0");
        Env("PEFT_plugins__directories__1", "env-1");
        Env("PEFT_training__seed", "2");
        var sets = new[] { "plugins:directories=[set-0]", "training:batch_size=3" };

        var all = HostConfiguration.Load(file, sets);
        PluginsOptions.From(all).Directories.Should().Equal(["set-0"], "--set's list replaces the environment's, which replaced the file's");
        (all["training:seed"], all["training:batch_size"]).Should().Be(("2", "3"), "plain keys still override one by one");

        PluginsOptions.From(HostConfiguration.Load(file, Array.Empty<string>())).Directories.Should().Equal(["env-0", "env-1"], "not env-0, env-1, json-2");
        PluginsOptions.From(HostConfiguration.Load(file, Array.Empty<string>(), includeEnvironment: false)).Directories.Should().Equal("json-0", "json-1", "json-2");
    }

    [Fact]
    public void Set_overrides_parse_keys_and_values_and_the_last_one_wins()
    {
        var parsed = HostConfiguration.ParseOverrides(new[] { "training:learning_rate=1e-4", "output:dir=a=b", "training:learning_rate=2e-4", "method:name=" });
        parsed.Should().BeEquivalentTo(new Dictionary<string, string?>
        {
            ["training:learning_rate"] = "2e-4", ["output:dir"] = "a=b", ["method:name"] = "",
        });
    }

    [Fact]
    public void Set_without_equals_is_an_error_naming_it()
    {
        var act = () => HostConfiguration.Load(null, new[] { "training:learning_rate" }, includeEnvironment: false);
        act.Should().Throw<CliException>().WithMessage("--set 'training:learning_rate': expected SECTION:KEY=VALUE (no '=' found)");
        var empty = () => HostConfiguration.Load(null, new[] { "training::lr=1" }, includeEnvironment: false);
        empty.Should().Throw<CliException>().WithMessage("--set 'training::lr=1': *empty part*");
    }

    [Fact]
    public void Unknown_top_level_section_names_it_its_source_and_the_known_ones()
    {
        var file = Json("""{ "trainng": { "learning_rate": 0.001 } }""");
        var act = () => HostConfiguration.Load(file, Array.Empty<string>(), includeEnvironment: false);
        act.Should().Throw<PeftConfigurationException>().WithMessage(
            $"configuration key 'trainng': unknown top-level section (set by configuration file '{file}'; known sections: model, data, training, method, quantization, optimizer, hooks, output, distributed, plugins)");

        Env("PEFT_trainng__learning_rate", "1");
        var fromEnv = () => HostConfiguration.Load(null, Array.Empty<string>());
        fromEnv.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'trainng': unknown top-level section (set by an environment variable PEFT_trainng...*");

        var fromSet = () => HostConfiguration.Load(null, new[] { "modle:path=/m" }, includeEnvironment: false);
        fromSet.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'modle': unknown top-level section (set by --set modle...*");
    }

    [Fact]
    public void A_section_given_a_single_value_is_an_error()
    {
        var act = () => HostConfiguration.Load(null, new[] { "training=fast" }, includeEnvironment: false);
        act.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'training' has value 'fast': 'training' is a section and needs keys*");
    }

    [Fact]
    public void Unknown_nested_key_names_the_key_and_the_value()
    {
        var file = Json("""{ "plugins": { "directory": "/opt/plugins" } }""");
        var act = () => HostConfiguration.Load(file, Array.Empty<string>(), includeEnvironment: false);
        act.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'plugins:directory' has value '/opt/plugins': unknown key (known keys here: directories)");
    }

    [Fact]
    public void Bad_values_name_the_key_and_the_value()
    {
        var scalar = () => HostConfiguration.Load(Json("""{ "plugins": { "directories": "/opt/plugins" } }"""), Array.Empty<string>(), includeEnvironment: false);
        scalar.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'plugins:directories' has value '/opt/plugins': must be a list of folders*");

        var empty = () => HostConfiguration.Load(null, new[] { "plugins:directories:0=/a", "plugins:directories:1= " }, includeEnvironment: false);
        empty.Should().Throw<PeftConfigurationException>().WithMessage("configuration key 'plugins:directories:1' has value ' ': must be a folder path, not empty");
    }

    [Fact]
    public void Missing_file_is_an_error_naming_it()
    {
        var missing = Path.Combine(_dir, "nope.json");
        var act = () => HostConfiguration.Load(missing, Array.Empty<string>(), includeEnvironment: false);
        act.Should().Throw<CliException>().WithMessage($"configuration file '{missing}' does not exist");
    }

    [Fact]
    public void Broken_json_is_an_error_naming_the_file_and_the_place()
    {
        var file = Json("{ \"plugins\": { \"directories\": [ \"a\" \n }");
        var act = () => HostConfiguration.Load(file, Array.Empty<string>(), includeEnvironment: false);
        act.Should().Throw<CliException>().WithMessage($"configuration file '{file}' is not a valid JSON configuration: *LineNumber: 1*");

        var array = Json("[ 1, 2 ]", "array.json");
        var notObject = () => HostConfiguration.Load(array, Array.Empty<string>(), includeEnvironment: false);
        notObject.Should().Throw<CliException>().WithMessage($"configuration file '{array}' is not a valid JSON configuration: *");
    }

    [Fact]
    public void Known_sections_without_an_options_class_yet_are_accepted_as_they_are()
    {
        var file = Json("""{ "training": { "learning_rate": 0.0002 }, "hooks": [ { "name": "lisa" } ] }""");
        var root = HostConfiguration.Load(file, Array.Empty<string>(), includeEnvironment: false);
        root["training:learning_rate"].Should().Be("0.0002");
        root["hooks:0:name"].Should().Be("lisa");

        // JSON's empty array and empty object read as "" in Microsoft.Extensions.Configuration: still fine
        var empty = HostConfiguration.Load(Json("""{ "plugins": { "directories": [] }, "output": {} }""", "empty.json"), Array.Empty<string>(), includeEnvironment: false);
        PluginsOptions.From(empty).Directories.Should().BeEmpty();
    }
}
