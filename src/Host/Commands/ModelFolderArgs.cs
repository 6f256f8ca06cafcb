using Peft.Host.Cli;
using Peft.Host.Model;
using Peft.Host.Tokenization;

namespace Peft.Host.Commands;

/// <summary>Opening the <c>--model DIR</c> folder shared by generate and eval.</summary>
internal static class ModelFolderArgs
{
    public static (LlamaForCausalLM Model, ITextTokenizer Tokenizer) Open(string verb, string dir)
    {
        if (!Directory.Exists(dir)) throw new CliException($"{verb}: option '--model': '{dir}' is not a folder");
        var config = LlamaConfig.Load(Path.Combine(dir, HfModelFolder.ConfigFile));
        ITextTokenizer tokenizer;
        try { tokenizer = TokenizerFolder.Open(dir, config.BosTokenId, config.EosTokenIds); }
        catch (Formats.PeftFormatException e) when (!File.Exists(Path.Combine(dir, ByteLevelBpeTokenizer.FileName)) && !File.Exists(Path.Combine(dir, TokenizerFolder.SentencePieceFile)))
        { throw new CliException($"{verb}: {e.Message} (import-llama2c writes a tokenizer.model; HF folders carry tokenizer.json)"); }
        if (tokenizer.VocabSize > config.VocabSize)
            throw new CliException($"{verb}: the tokenizer in {dir} has {tokenizer.VocabSize} tokens but config.json has vocab_size {config.VocabSize}");
        var model = HfModelFolder.Load(dir);
        return (model, tokenizer);
    }

    /// <summary>
    /// <see cref="Open"/>, then the <c>--adapter</c> folder (when given) attached through the loaded plugins.
    /// Dispose the returned plugins handle after the model.
    /// </summary>
    public static (LlamaForCausalLM Model, ITextTokenizer Tokenizer, IDisposable? Plugins) OpenWithAdapter(string verb, string dir, string? adapterDir, CliContext context,
        Microsoft.Extensions.Configuration.IConfiguration plugins)
    {
        var (model, tokenizer) = Open(verb, dir);
        if (adapterDir is null) return (model, tokenizer, null);
        try
        {
            var (catalog, _) = AdapterAttachment.Attach(verb, adapterDir, model, context, plugins);
            return (model, tokenizer, catalog);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
