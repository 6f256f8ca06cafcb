namespace Peft.Testing;

/// <summary>
/// Where tests find their data. The small assets (stories260K, its tokenizer, the Alpaca-style rows, the TinyStories
/// text) are vendored in the repository's <c>data/</c> folder, so a clone alone runs them. Larger optional reference
/// data (real HF PEFT adapters, the Llama 3 tokenizer) lives in <c>../shared/data/</c> beside the repository; a test
/// that needs it fails with a message naming the missing folder.
/// </summary>
public static class TestData
{
    /// <summary>The repository root: the nearest folder above the test binaries holding Framework.sln.</summary>
    public static readonly string RepoRoot = FindRepoRoot();

    /// <summary>A file or folder under the repository's <c>data/</c> folder (must exist: it is committed).</summary>
    public static string Repo(string relative)
    {
        var full = Path.GetFullPath(Path.Combine(RepoRoot, "data", relative));
        if (!File.Exists(full) && !Directory.Exists(full))
            throw new FileNotFoundException($"vendored test data data/{relative} is missing from the repository at {full}", full);
        return full;
    }

    /// <summary>
    /// A file or folder under <c>../shared/data/</c> beside the repository (optional reference data that is not
    /// vendored). When the folder is absent the test fails with a message naming it.
    /// </summary>
    public static string Shared(string relative)
    {
        var top = relative.Split('/', '\\')[0];
        var folder = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "data", top));
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException(
                $"this test needs the optional reference data folder ../shared/data/{top} beside the repository ({folder}), " +
                "which is not present; see data/README.md (\"Larger optional data\") for what goes there");
        var full = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "data", relative));
        if (!File.Exists(full) && !Directory.Exists(full))
            throw new FileNotFoundException($"../shared/data/{relative} is missing ({full}); see data/README.md", full);
        return full;
    }

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Framework.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("no Framework.sln above the test binaries at " + AppContext.BaseDirectory);
    }
}
