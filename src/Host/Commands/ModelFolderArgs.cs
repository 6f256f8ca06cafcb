using Peft.Host.Cli;
using Peft.Host.Model;
using Peft.Host.Tokenization;

namespace Peft.Host.Commands;

/// <summary>Opening the <c>--model DIR</c> folder shared by generate and eval.</summary>
internal static class ModelFolderArgs
{
    public static (LlamaForCausalLM Model, SentencePieceTokenizer Tokenizer) Open(string verb, string dir)
    {
        if (!Directory.Exists(dir)) throw new CliException($"{verb}: option '--model': '{dir}' is not a folder");
        var tokenizerPath = Path.Combine(dir, HfModelFolder.TokenizerFile);
        if (!File.Exists(tokenizerPath))
            throw new CliException($"{verb}: '{dir}' has no {HfModelFolder.TokenizerFile} (the SentencePiece model; import-llama2c writes one)");
        var tokenizer = SentencePieceTokenizer.Load(tokenizerPath);
        var model = HfModelFolder.Load(dir);
        if (tokenizer.VocabSize > model.Config.VocabSize)
        {
            model.Dispose();
            throw new CliException($"{verb}: {tokenizerPath} has {tokenizer.VocabSize} tokens but config.json has vocab_size {model.Config.VocabSize}");
        }
        return (model, tokenizer);
    }

    /// <summary>
    /// <see cref="Open"/>, then the <c>--adapter</c> folder (when given) attached through the loaded plugins.
    /// Dispose the returned plugins handle after the model.
    /// </summary>
    public static (LlamaForCausalLM Model, SentencePieceTokenizer Tokenizer, IDisposable? Plugins) OpenWithAdapter(string verb, string dir, string? adapterDir, CliContext context,
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
