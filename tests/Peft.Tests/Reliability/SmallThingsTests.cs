using System.Text.Json.Nodes;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>Issue 7 item 10: small things a user sees.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class SmallThingsTests(Stories260KFixture fx)
{
    [Fact]
    public void The_adapter_names_its_base_model_as_given_not_by_this_machines_absolute_path()
    {
        var run = $"small-{Guid.NewGuid():N}";
        var config = RunKit.WriteConfig(Path.Combine(fx.Root, run + "-cfg"), Path.GetFileName(fx.ModelDir), run, maxSteps: 1, checkpointEvery: 0);
        var r = PeftProcess.Run(fx.Root, "train", "--config", config);
        r.Code.Should().Be(0, r.ToString());
        var adapterConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(fx.Root, run, "adapter", "adapter_config.json")))!;
        adapterConfig["base_model_name_or_path"]!.GetValue<string>().Should().Be(Path.GetFileName(fx.ModelDir), "PEFT writes the model id or the path as given");
    }

    [Fact]
    public void The_top_level_help_does_not_advertise_methods_and_points_to_peft_plugins()
    {
        var r = RunKit.Peft("--help");
        r.Code.Should().Be(0);
        r.Out.Should().NotContain("DoRA").And.NotContain("GaLore").And.Contain("peft plugins");
    }

    [Fact]
    public void Generate_reports_the_tokens_and_tokens_per_second_its_help_promises()
    {
        var r = RunKit.Peft("generate", "--model", fx.ModelDir, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "56");
        r.Code.Should().Be(0, r.Err);
        r.Err.Should().MatchRegex(@"^generate: 56 tokens in \d+\.\d\d s \(\d+\.\d tokens/s\)\n$");
    }
}
