using Peft.Host.Import;
using Peft.Host.Model;
using Peft.Host.Tokenization;

namespace Peft.Tests.Import;

/// <summary>
/// stories260K (llama2.c's tiny Llama, vendored in data/stories260K) imported once into a temporary HF folder and
/// loaded, shared by every test in the "stories260K" collection.
/// </summary>
public sealed class Stories260KFixture : IDisposable
{
    public static readonly string DataDir = TestData.Repo("stories260K");
    public static string Checkpoint => Path.Combine(DataDir, "stories260K.bin");
    public static string TokenizerModel => Path.Combine(DataDir, "tok512.model");
    public static string Notes => Path.Combine(DataDir, "stories260K.md");

    public Stories260KFixture()
    {
        Root = Directory.CreateTempSubdirectory("peft-stories-").FullName;
        ModelDir = Path.Combine(Root, "stories260K-hf");
        Llama2cImporter.Import(Checkpoint, TokenizerModel, ModelDir);
        Model = HfModelFolder.Load(ModelDir);
        Model.eval();
        Tokenizer = SentencePieceTokenizer.Load(Path.Combine(ModelDir, HfModelFolder.TokenizerFile));
    }

    public string Root { get; }
    public string ModelDir { get; }
    public LlamaForCausalLM Model { get; }
    public SentencePieceTokenizer Tokenizer { get; }

    /// <summary>A fresh empty folder under the fixture's temporary root.</summary>
    public string NewDir(string name) => Path.Combine(Root, $"{name}-{Guid.NewGuid():N}");

    public void Dispose()
    {
        Model.Dispose();
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The sample the author printed with <c>./run stories260K.bin -z tok512.bin ...</c> in stories260K.md:
    /// the lines between the command whose options contain <paramref name="runOptions"/> and the closing fence.
    /// </summary>
    public static string SampleFromNotes(string runOptions)
    {
        var lines = File.ReadAllLines(Notes);
        int start = Array.FindIndex(lines, l => l.StartsWith("$ ./run ", StringComparison.Ordinal) && l.EndsWith(runOptions, StringComparison.Ordinal));
        if (start < 0) throw new InvalidOperationException($"no './run ... {runOptions}' block in {Notes}");
        int end = Array.FindIndex(lines, start + 1, l => l.StartsWith("```", StringComparison.Ordinal));
        return string.Join("\n", lines[(start + 1)..end]);
    }
}

[CollectionDefinition(Name)]
public sealed class Stories260KCollection : ICollectionFixture<Stories260KFixture>
{
    public const string Name = "stories260K";
}

/// <summary>
/// stories260K for tests whose results depend on torch's global generator (INT8 GaLore's stochastic rounding draws
/// from it): they run alone, after the parallel collections, so no other test draws from the generator meanwhile.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialStories260KCollection : ICollectionFixture<Stories260KFixture>
{
    public const string Name = "stories260K, serial";
}
