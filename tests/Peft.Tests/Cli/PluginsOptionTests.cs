using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Tests.Import;
using Peft.Tests.Plugins;
using TorchSharp;

namespace Peft.Tests.Cli;

/// <summary>
/// <c>--plugins DIR</c> on every verb: a plugin folder outside the build output (here: a copy of a test plugin in a
/// temp folder, with the host's own plugins/ folder empty) is loaded by plugins, eval, generate and merge; a bad path
/// is one line and exit code 2; unknown component names are reported before any model is imported.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class PluginsOptionTests(Stories260KFixture fx)
{
    static (int Code, string Out, string Err) Run(string baseDirectory, params string[] argv)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(argv, new CliContext(stdout, stderr) { BaseDirectory = baseDirectory });
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Plugins_lists_a_plugin_from_a_folder_outside_the_build()
    {
        using var temp = new TempFolder();
        PluginTestFolders.CopyFolder(PluginTestFolders.TestPlugin("Sample"), temp.Sub("drop-in", "Sample"));
        var host = Directory.CreateDirectory(temp.Sub("host")).FullName;   // no plugins/ folder: nothing is bundled

        Run(host, "plugins", "--json").Out.Should().Be("[]\n");
        var (code, output, error) = Run(host, "plugins", "--json", "--plugins", temp.Sub("drop-in"));
        code.Should().Be(0, error);
        var plugins = JsonNode.Parse(output)!.AsArray();
        plugins.Select(p => (string)p!["name"]!).Should().Equal("sample");
        ((string)plugins[0]!["assembly"]!).Should().StartWith(temp.Sub("drop-in", "Sample"));
        plugins[0]!["provides"]!["methods"]!.AsArray().Select(n => (string)n!).Should().Equal("sample-method");
    }

    [Fact]
    public void Eval_generate_and_merge_apply_an_adapter_whose_method_comes_from_a_plugins_folder()
    {
        using var temp = new TempFolder();
        PluginTestFolders.CopyFolder(PluginTestFolders.TestPlugin("Methods"), temp.Sub("drop-in", "Methods"));
        var host = Directory.CreateDirectory(temp.Sub("host")).FullName;
        var data = temp.Sub("eval.txt");
        File.WriteAllText(data, "Once upon a time, there was a little girl named Lily.\n\nShe liked to play in the park with her dog.\n");

        // A test-scale adapter (y = g ⊙ W x, g moved away from 1) saved as a PEFT folder on the stories260K model.
        var adapterDir = temp.Sub("adapter");
        using (var catalog = PluginCatalog.Load([temp.Sub("drop-in")]))
        using (var model = HfModelFolder.Load(fx.ModelDir))
        {
            var method = catalog.GetMethod("test-scale");
            var adapter = method.Attach(model, "default", new ConfigurationBuilder().Build());
            using (torch.no_grad())
                foreach (var (_, p) in adapter.TrainableParameters) p.mul_(1.5);
            PeftAdapterFolder.Save(adapter, adapterDir, fx.ModelDir);
        }

        var baseline = Run(host, "eval", "--model", fx.ModelDir, "--data", data, "--json");
        baseline.Code.Should().Be(0, baseline.Err);
        var without = Run(host, "eval", "--model", fx.ModelDir, "--adapter", adapterDir, "--data", data, "--json");
        without.Code.Should().Be(2, "without --plugins no loaded method reads the adapter");
        without.Err.Should().Contain("no loaded method reads peft_type 'TEST_SCALE'");

        var with = Run(host, "eval", "--model", fx.ModelDir, "--adapter", adapterDir, "--data", data, "--json", "--plugins", temp.Sub("drop-in"));
        with.Code.Should().Be(0, with.Err);
        double Loss(string output) => (double)JsonNode.Parse(output.TrimEnd().Split('\n')[^1])!["loss"]!;
        Loss(with.Out).Should().NotBe(Loss(baseline.Out), "the adapter scales every projection by 1.5, so the loss changes");

        var gen = Run(host, "generate", "--model", fx.ModelDir, "--adapter", adapterDir, "--temperature", "0", "--max-new-tokens", "8", "--plugins", temp.Sub("drop-in"));
        gen.Code.Should().Be(0, gen.Err);

        var merged = temp.Sub("merged");
        var merge = Run(host, "merge", "--model", fx.ModelDir, "--adapter", adapterDir, "--out", merged, "--plugins", temp.Sub("drop-in", "Methods"));
        merge.Code.Should().Be(0, merge.Err);
        Loss(Run(host, "eval", "--model", merged, "--data", data, "--json").Out).Should().BeApproximately(Loss(with.Out), 1e-4,
            "the merged model computes what the adapter computed");
    }

    [Theory]
    [InlineData("plugins")]
    [InlineData("eval", "--model", "M", "--data", "D")]
    [InlineData("generate", "--model", "M")]
    [InlineData("merge", "--model", "M", "--adapter", "A", "--out", "O")]
    [InlineData("train", "--set", "output:dir=O")]
    public void A_plugins_path_that_is_not_a_folder_is_one_line_and_exit_code_2(string verb, params string[] rest)
    {
        using var temp = new TempFolder();
        var missing = temp.Sub("no-such-plugins");
        var (code, output, error) = Run(temp.Path, [verb, .. rest, "--plugins", missing]);
        code.Should().Be(2);
        output.Should().BeEmpty();
        error.Should().Be($"peft {verb}: error: option '--plugins': '{missing}' is not a folder\n");
    }

    [Fact]
    public void Plugins_folders_from_json_environment_and_the_option_are_all_loaded()
    {
        using var temp = new TempFolder();
        var root = Peft.Host.Configuration.HostConfiguration.Load(null, ["plugins:directories:0=/from/set"], includeEnvironment: false,
            pluginDirectories: [PluginTestFolders.TestPlugin("Sample"), PluginTestFolders.TestPlugin("Methods")]);
        PluginsOptions.From(root).Directories.Should().Equal("/from/set", PluginTestFolders.TestPlugin("Sample"), PluginTestFolders.TestPlugin("Methods"));
    }

    [Fact]
    public void An_unknown_method_is_reported_before_the_model_is_imported()
    {
        using var temp = new TempFolder();
        var modelDir = temp.Sub("model-to-import");
        var (code, _, error) = Run(AppContext.BaseDirectory, "train",
            "--set", $"model:path={modelDir}",
            "--set", $"model:import_llama2c:checkpoint={Stories260KFixture.Checkpoint}",
            "--set", $"model:import_llama2c:tokenizer={Stories260KFixture.TokenizerModel}",
            "--set", "method:name=lorra",
            "--set", $"data:path={TestData.Repo("tinystories/tinystories_train_head.txt")}",
            "--set", $"output:dir={temp.Sub("out")}");
        code.Should().Be(2);
        error.Should().StartWith("peft train: error: configuration key 'method:name' has value 'lorra': unknown method 'lorra' (available methods: ")
            .And.Contain("lora").And.NotContain("\n  at ");
        Directory.Exists(modelDir).Should().BeFalse("nothing was imported");
    }
}
