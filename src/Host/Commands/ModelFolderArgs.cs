using Peft.Host.Cli;
using Peft.Host.Composition;
using Peft.Host.Plugins;
using Peft.Host.Model;
using Peft.Host.Tokenization;

namespace Peft.Host.Commands;

/// <summary>Opening the <c>--model DIR</c> folder shared by generate and eval.</summary>
internal static class ModelFolderArgs
{
    /// <summary>
    /// Open the folder. A quantized folder (config.json with quantization_config) is rebuilt through the quantizer
    /// plugin that reads it, so it needs <paramref name="catalog"/>.
    /// </summary>
    public static (LlamaForCausalLM Model, SentencePieceTokenizer Tokenizer) Open(string verb, string dir, PluginCatalog? catalog = null)
    {
        if (!Directory.Exists(dir)) throw new CliException($"{verb}: option '--model': '{dir}' is not a folder");
        var tokenizerPath = Path.Combine(dir, HfModelFolder.TokenizerFile);
        if (!File.Exists(tokenizerPath))
            throw new CliException($"{verb}: '{dir}' has no {HfModelFolder.TokenizerFile} (the SentencePiece model; import-llama2c writes one)");
        var tokenizer = SentencePieceTokenizer.Load(tokenizerPath);
        LlamaForCausalLM model;
        if (QuantizedModelFolder.ReadQuantizationConfig(dir) is null) model = HfModelFolder.Load(dir);
        else if (catalog is null) throw new CliException($"{verb}: '{dir}' is a quantized model folder; loading it needs the quantizer plugins");
        else model = QuantizedModelFolder.Load(dir, catalog);
        if (tokenizer.VocabSize > model.Config.VocabSize)
        {
            model.Dispose();
            throw new CliException($"{verb}: {tokenizerPath} has {tokenizer.VocabSize} tokens but config.json has vocab_size {model.Config.VocabSize}");
        }
        return (model, tokenizer);
    }

    /// <summary>
    /// <see cref="Open"/> (a quantized folder through the plugins), then <c>--quantize</c> (when given) and the
    /// <c>--adapter</c> folder (when given) through the loaded plugins. Dispose the returned plugins handle after the model.
    /// </summary>
    public static (LlamaForCausalLM Model, SentencePieceTokenizer Tokenizer, IDisposable? Plugins) OpenWithAdapter(string verb, string dir, string? adapterDir, CliContext context,
        Microsoft.Extensions.Configuration.IConfiguration plugins, QuantizeArgs? quantize = null)
    {
        if (adapterDir is not null && !Directory.Exists(adapterDir)) throw new CliException($"{verb}: option '--adapter': '{adapterDir}' is not a folder");
        bool quantizedFolder = Directory.Exists(dir) && QuantizedModelFolder.ReadQuantizationConfig(dir) is not null;
        if (adapterDir is null && quantize is null && !quantizedFolder)
        {
            var (plain, tok) = Open(verb, dir);
            return (plain, tok, null);
        }
        var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, plugins);
        LlamaForCausalLM? model = null;
        try
        {
            (model, var tokenizer) = Open(verb, dir, catalog);
            quantize?.Apply(verb, catalog, model);
            if (adapterDir is not null) AdapterAttachment.AttachWith(catalog, adapterDir, model);
            return (model, tokenizer, catalog);
        }
        catch
        {
            model?.Dispose();
            catalog.Dispose();
            throw;
        }
    }
}
