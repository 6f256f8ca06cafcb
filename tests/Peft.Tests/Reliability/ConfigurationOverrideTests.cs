using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Host.Configuration;
using Peft.Tests.Configuration;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 items 6 and 9: list overrides replace (and duplicates are refused); unrelated PEFT_* variables are
/// ignored; switching the method from the command line drops the old method's options; a misspelled flag is
/// reported as unknown.
/// </summary>
[Collection(ProcessEnvironmentCollection.Name)]
public sealed class ConfigurationOverrideTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("peft-overrides-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    string LoraFile() => WriteJson("""
        { "method": { "name": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
          "output": { "dir": "out/x" } }
        """);

    string WriteJson(string text)
    {
        var path = Path.Combine(_dir, $"c-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, text);
        return path;
    }

    static List<string?> Targets(Microsoft.Extensions.Configuration.IConfiguration root) =>
        root.GetSection("method:target_modules").GetChildren().Select(c => c.Value).ToList();

    [Theory]
    [InlineData("method:target_modules=[q_proj,v_proj]")]
    [InlineData("method:target_modules=[\"q_proj\", \"v_proj\"]")]
    [InlineData("method:target_modules=q_proj,v_proj")]
    public void A_list_given_on_the_command_line_replaces_the_files_list(string set)
    {
        var root = HostConfiguration.Load(LoraFile(), [set], includeEnvironment: false);
        Targets(root).Should().Equal("q_proj", "v_proj");
    }

    [Fact]
    public void Element_overrides_replace_the_list_too()
    {
        // the issue's case: this trained q, v, v, o, gate, up, down before
        var root = HostConfiguration.Load(LoraFile(), ["method:target_modules:0=q_proj", "method:target_modules:1=v_proj"], includeEnvironment: false);
        Targets(root).Should().Equal("q_proj", "v_proj");
        // a regex string replaces the list as well (no stray list entries beside it)
        var regex = HostConfiguration.Load(LoraFile(), [@"method:target_modules=.*\.(q|v)_proj"], includeEnvironment: false);
        regex["method:target_modules"].Should().Be(@".*\.(q|v)_proj");
        Targets(regex).Should().BeEmpty();
    }

    [Fact]
    public void A_target_listed_twice_is_refused_naming_it()
    {
        var act = () => HostConfiguration.Load(LoraFile(), ["method:target_modules=[q_proj,v_proj,q_proj]"], includeEnvironment: false);
        act.Should().Throw<PeftConfigurationException>().Which.Message.Should()
            .Be("configuration key 'method:target_modules' has value '[q_proj, v_proj, q_proj]': lists 'q_proj' 2 times; each entry may appear once");
    }

    [Fact]
    public void Unrelated_PEFT_variables_are_ignored_through_the_real_process()
    {
        var env = new Dictionary<string, string?> { ["PEFT_HOME"] = "/opt/peft", ["PEFT_CACHE_DIR"] = "/tmp/x", ["PEFT_bogus__x"] = "1", ["PEFT_training__seed"] = "notanumber" };
        var plugins = PeftProcess.Run(_dir, ["plugins"], new Dictionary<string, string?> { ["PEFT_HOME"] = "/opt/peft", ["PEFT_CACHE_DIR"] = "/tmp/x" });
        plugins.Code.Should().Be(0, plugins.ToString());

        // a PEFT_<section>__key variable still is configuration, and its bad value is reported naming it
        var train = PeftProcess.Run(_dir, ["train", "--config", LoraFile()], env);
        RunKit.ShouldBeACleanRefusal(train.Code, train.Err, "training:seed", "notanumber");
    }

    [Fact]
    public void Switching_the_method_on_the_command_line_drops_the_old_methods_options()
    {
        var root = HostConfiguration.Load(LoraFile(), ["method:name=full"], includeEnvironment: false);
        root.GetSection("method").GetChildren().Select(c => c.Key).Should().Equal("name");
        // in one layer, the same keys are still an error of the file (full fine-tuning has no r)
        var same = HostConfiguration.Load(WriteJson("""{ "method": { "name": "full", "r": 8 } }"""), [], includeEnvironment: false);
        same["method:r"].Should().Be("8");
    }

    [Theory]
    [InlineData("--jsn", "unknown option '--jsn' (did you mean '--json'?")]
    [InlineData("--modle", "unknown option '--modle' (did you mean '--model'?")]
    public void A_misspelled_option_is_reported_as_unknown_not_as_needing_a_value(string typo, string expected)
    {
        string[] args = typo == "--jsn"
            ? ["eval", "--model", "m", "--data", "d", typo]
            : ["eval", typo, "m", "--data", "d"];
        var r = RunKit.Peft(args);
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, expected);
        r.Err.Should().NotContain("needs a value");
        var missing = RunKit.Peft("eval", "--model", "m", "--data");
        RunKit.ShouldBeACleanRefusal(missing.Code, missing.Err, "option '--data' needs a value");
    }
}
