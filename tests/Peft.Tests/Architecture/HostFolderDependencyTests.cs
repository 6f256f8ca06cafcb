using System.Text.RegularExpressions;

namespace Peft.Tests.Architecture;

/// <summary>
/// The Host's folders (one namespace each: src/Host/Model → Peft.Host.Model) import each other in one direction
/// only. A folder F depends on G when a .cs file of F has <c>using Peft.Host.G;</c>, names <c>Peft.Host.G.</c>,
/// or names one of G's types qualified by the folder (<c>Training.TrainingException</c>). Comments are ignored.
/// </summary>
public class HostFolderDependencyTests
{
    static string HostDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Framework.sln")))
                return Path.Combine(dir.FullName, "src", "Host");
        throw new DirectoryNotFoundException("Framework.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>Folder → the folders it depends on, each with one file and the text that shows it.</summary>
    public static Dictionary<string, Dictionary<string, string>> Dependencies(string hostDirectory)
    {
        var files = Directory.GetFiles(hostDirectory, "*.cs", SearchOption.AllDirectories)
            .Select(f => (Path: f, Relative: Path.GetRelativePath(hostDirectory, f).Replace('\\', '/')))
            .Where(f => f.Relative.Contains('/') && !f.Relative.StartsWith("bin/") && !f.Relative.StartsWith("obj/"))
            .Select(f => (f.Path, f.Relative, Folder: f.Relative[..f.Relative.IndexOf('/')], Text: StripComments(File.ReadAllText(f.Path))))
            .ToList();
        var folders = files.Select(f => f.Folder).Distinct().ToList();
        var types = folders.ToDictionary(f => f, f => files.Where(x => x.Folder == f)
            .SelectMany(x => Regex.Matches(x.Text, @"\b(?:class|interface|record|struct|enum)\s+([A-Z]\w*)").Select(m => m.Groups[1].Value))
            .ToHashSet());
        var result = folders.ToDictionary(f => f, _ => new Dictionary<string, string>());
        foreach (var file in files)
            foreach (var other in folders.Where(g => g != file.Folder))
            {
                var hit = Regex.Match(file.Text, $@"using\s+(static\s+)?Peft\.Host\.{other}\b|\bHost\.{other}\.");
                if (!hit.Success && types[other].Count > 0)
                    hit = Regex.Match(file.Text, $@"(?<![\w.]){other}\.({string.Join("|", types[other])})\b");
                if (hit.Success && !result[file.Folder].ContainsKey(other))
                    result[file.Folder][other] = $"{file.Relative}: {hit.Value}";
            }
        return result;
    }

    static string StripComments(string text) =>
        Regex.Replace(text, @"/\*.*?\*/|//[^\n]*", "", RegexOptions.Singleline);

    /// <summary>A cycle of folders (first = last), or null.</summary>
    public static List<string>? FindCycle(Dictionary<string, Dictionary<string, string>> graph)
    {
        var state = graph.Keys.ToDictionary(k => k, _ => 0); // 0 new, 1 on the path, 2 done
        var path = new List<string>();
        List<string>? Visit(string node)
        {
            state[node] = 1;
            path.Add(node);
            foreach (var next in graph[node].Keys.Order(StringComparer.Ordinal))
            {
                if (state[next] == 1) return [.. path[path.IndexOf(next)..], next];
                if (state[next] == 0 && Visit(next) is { } found) return found;
            }
            path.RemoveAt(path.Count - 1);
            state[node] = 2;
            return null;
        }
        foreach (var node in graph.Keys.Order(StringComparer.Ordinal))
            if (state[node] == 0 && Visit(node) is { } cycle) return cycle;
        return null;
    }

    [Fact]
    public void No_host_folder_imports_one_that_imports_it_back()
    {
        var graph = Dependencies(HostDirectory());
        graph.Keys.Should().Contain(["Model", "Training", "Composition", "Commands", "Cli", "Plugins", "Configuration"]);
        var cycle = FindCycle(graph);
        var evidence = cycle is null ? "" : string.Join("; ", cycle.Zip(cycle.Skip(1), (a, b) => $"{a} -> {b} ({graph[a][b]})"));
        cycle.Should().BeNull($"Host folders must not form a cycle: {evidence}");
    }

    [Fact]
    public void The_model_and_the_cli_basics_stand_on_their_own()
    {
        var graph = Dependencies(HostDirectory());
        graph["Model"].Keys.Should().BeEquivalentTo(["Formats"], "the model knows its weights' format, not training or composition");
        graph["Cli"].Keys.Should().BeEmpty("argument parsing and CLI errors know no verb");
        graph["Composition"].Keys.Should().NotContain(["Cli", "Commands"], "composition throws domain exceptions, the commands map them");
    }

    [Fact]
    public void The_scan_finds_a_planted_cycle_and_names_the_files()
    {
        // Two folders that import each other, one through a using and one through a qualified type name.
        var root = Directory.CreateTempSubdirectory("peft-arch-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "Alpha"));
            Directory.CreateDirectory(Path.Combine(root, "Beta"));
            File.WriteAllText(Path.Combine(root, "Alpha", "A.cs"), "using Peft.Host.Beta;\nnamespace Peft.Host.Alpha;\npublic class A { B? b; }\n");
            File.WriteAllText(Path.Combine(root, "Beta", "B.cs"), "namespace Peft.Host.Beta;\n// Alpha.A in a comment does not count\npublic class B { object x = typeof(Alpha.A); }\n");
            var graph = Dependencies(root);
            graph["Alpha"].Should().ContainKey("Beta");
            graph["Beta"]["Alpha"].Should().Be("Beta/B.cs: Alpha.A");
            FindCycle(graph).Should().Equal("Alpha", "Beta", "Alpha");
        }
        finally { Directory.Delete(root, recursive: true); }
    }
}
