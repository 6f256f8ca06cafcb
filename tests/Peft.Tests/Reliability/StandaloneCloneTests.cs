using System.Text.Json.Nodes;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 18: a clone stands alone. The README's commands and every example read only repository-relative paths
/// under <c>data/</c>; nothing needs <c>../shared</c>. (The full "clone, build, run" check is <c>.ci/standalone</c>.)
/// </summary>
public sealed class StandaloneCloneTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("peft-alone-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    static IEnumerable<string> StringValues(JsonNode? node) => node switch
    {
        JsonObject o => o.SelectMany(p => StringValues(p.Value)),
        JsonArray a => a.SelectMany(StringValues),
        JsonValue v when v.TryGetValue<string>(out var s) => [s],
        _ => [],
    };

    [Fact]
    public void Every_example_and_the_README_name_only_data_inside_the_repository()
    {
        var examples = Directory.GetFiles(Path.Combine(TestData.RepoRoot, "examples"), "*.json");
        examples.Should().NotBeEmpty();
        foreach (var example in examples)
        {
            var paths = StringValues(JsonNode.Parse(File.ReadAllText(example))).Where(s => s.StartsWith("data/") || s.Contains("shared/")).ToList();
            paths.Should().NotContain(p => p.Contains("shared/"), $"{Path.GetFileName(example)} must not read ../shared");
            foreach (var p in paths)
                File.Exists(Path.Combine(TestData.RepoRoot, p)).Should().BeTrue($"{Path.GetFileName(example)} names {p}, which must be committed under data/");
        }
        var readme = File.ReadAllText(Path.Combine(TestData.RepoRoot, "README.md"));
        var commandLines = readme.Split('\n').Where(l => l.TrimStart().StartsWith("peft ") || l.Contains("--tokenizer ")).ToList();
        commandLines.Should().NotContain(l => l.Contains("../shared"), "the README's commands run from a clone alone");
        foreach (var token in commandLines.SelectMany(l => l.Split(' ')).Where(t => t.StartsWith("data/")))
            File.Exists(Path.Combine(TestData.RepoRoot, token)).Should().BeTrue($"the README names {token}");
    }

    [Fact]
    public void The_quickstart_runs_from_a_folder_with_only_the_repositorys_data_and_examples_and_no_shared_beside_it()
    {
        var repo = Path.Combine(_root, "repo");
        PeftProcess.CopyDirectory(Path.Combine(TestData.RepoRoot, "data"), Path.Combine(repo, "data"));
        PeftProcess.CopyDirectory(Path.Combine(TestData.RepoRoot, "examples"), Path.Combine(repo, "examples"));
        Directory.Exists(Path.Combine(_root, "shared")).Should().BeFalse();

        var r = PeftProcess.Run(repo, "train", "--config", "examples/quickstart.json",
            "--set", "training:max_steps=3", "--set", "training:eval_every=0", "--set", "training:checkpoint_every=0",
            "--set", "training:log_every=1");
        r.Code.Should().Be(0, r.ToString());
        File.Exists(Path.Combine(repo, "out", "models", "stories260K", "model.safetensors")).Should().BeTrue("the quickstart imports the vendored stories260K");
        File.Exists(Path.Combine(repo, "out", "quickstart", "adapter", "adapter_model.safetensors")).Should().BeTrue();
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(repo, "out", "quickstart", "training_summary.json")))!;
        summary["final_step"]!.GetValue<int>().Should().Be(3);
    }

    [Fact]
    public void A_test_that_needs_absent_reference_data_names_the_missing_folder()
    {
        var act = () => TestData.Shared("no_such_reference_set/file.json");
        act.Should().Throw<DirectoryNotFoundException>().WithMessage("*../shared/data/no_such_reference_set*not present*");
    }
}
