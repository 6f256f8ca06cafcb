using Peft.Testing;

namespace Peft.Tests.Tokenization;

/// <summary>The real Llama 3 tokenizer files in ../shared/data/llama3_tokenizer (tokenizer.json, tokenizer_config.json).</summary>
public static class Llama3TokenizerFiles
{
    /// <summary>The folder; a test that needs it fails naming the folder when it is absent.</summary>
    public static string Dir => TestData.Shared("llama3_tokenizer");

    public static string TokenizerJson => Path.Combine(Dir, "tokenizer.json");
    public static string TokenizerConfig => Path.Combine(Dir, "tokenizer_config.json");

    /// <summary>Copy both files into <paramref name="folder"/> (a model folder a test builds).</summary>
    public static void CopyInto(string folder)
    {
        Directory.CreateDirectory(folder);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.WriteAllBytes(Path.Combine(folder, f), File.ReadAllBytes(Path.Combine(Dir, f)));
    }
}
