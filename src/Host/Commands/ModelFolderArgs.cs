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
        if (NonFiniteValuesException.FirstNonFinite(model.named_parameters().Select(p => (p.name, (TorchSharp.torch.Tensor)p.parameter))) is { } bad)
        {
            model.Dispose();
            throw new NonFiniteValuesException($"{verb}: the model folder '{dir}' has non-finite values (NaN or infinity) in tensor '{bad}'");
        }
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
            RefuseNonFiniteAdapter(verb, adapterDir, model, catalog);
            return (model, tokenizer, catalog);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>After attaching an adapter: its tensors (the parameters the base model did not have) must be finite.</summary>
    public static void RefuseNonFiniteAdapter(string verb, string adapterDir, LlamaForCausalLM model, IDisposable catalog)
    {
        var bad = NonFiniteValuesException.FirstNonFinite(model.named_parameters().Select(p => (p.name, (TorchSharp.torch.Tensor)p.parameter)));
        if (bad is null) return;
        catalog.Dispose();
        throw new NonFiniteValuesException($"{verb}: the adapter '{adapterDir}' has non-finite values (NaN or infinity) in tensor '{bad}'");
    }
}
