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
    /// plugin that reads it, so it needs <paramref name="catalog"/>. With <paramref name="keepStoredDtype"/> (eval,
    /// generate: nothing trains) a folder stored entirely in bf16/fp16 keeps its weights in that dtype (half the
    /// memory of fp32; the layers compute in fp32 either way, so the logits are the same); otherwise weights are fp32.
    /// <paramref name="storageDtype"/>, when given, is the dtype a full-precision folder's weights are read into
    /// (tensor by tensor, converted in chunks: no fp32 copy of the model when it is bf16).
    /// </summary>
    public static (LlamaForCausalLM Model, ITextTokenizer Tokenizer) Open(string verb, string dir, PluginCatalog? catalog = null, bool keepStoredDtype = false,
                                                                         TorchSharp.torch.ScalarType? storageDtype = null)
    {
        if (!Directory.Exists(dir)) throw new CliException($"{verb}: option '--model': '{dir}' is not a folder");
        var config = LlamaConfig.Load(Path.Combine(dir, HfModelFolder.ConfigFile));
        ITextTokenizer tokenizer;
        try { tokenizer = TokenizerFolder.Open(dir, config.BosTokenId, config.EosTokenIds); }
        catch (Formats.PeftFormatException e) when (!File.Exists(Path.Combine(dir, ByteLevelBpeTokenizer.FileName)) && !File.Exists(Path.Combine(dir, TokenizerFolder.SentencePieceFile)))
        { throw new CliException($"{verb}: {e.Message} (import-llama2c writes a tokenizer.model; HF folders carry tokenizer.json)"); }
        if (tokenizer.VocabSize > config.VocabSize)
            throw new CliException($"{verb}: the tokenizer in {dir} has {tokenizer.VocabSize} tokens but config.json has vocab_size {config.VocabSize}");
        LlamaForCausalLM model;
        if (QuantizedModelFolder.ReadQuantizationConfig(dir) is null)
            model = HfModelFolder.Load(dir, storageDtype ?? (keepStoredDtype && HfModelFolder.StoredDtype(dir) is { } stored ? stored : TorchSharp.torch.ScalarType.Float32));
        else if (catalog is null) throw new CliException($"{verb}: '{dir}' is a quantized model folder; loading it needs the quantizer plugins");
        else model = QuantizedModelFolder.Load(dir, catalog);
        if (NonFiniteValuesException.FirstNonFinite(model.named_parameters().Select(p => (p.name, (TorchSharp.torch.Tensor)p.parameter))) is { } bad)
        {
            model.Dispose();
            throw new NonFiniteValuesException($"{verb}: the model folder '{dir}' has non-finite values (NaN or infinity) in tensor '{bad}'");
        }
        return (model, tokenizer);
    }

    /// <summary>
    /// <see cref="Open"/> (a quantized folder through the plugins), then <c>--quantize</c> (when given) and the
    /// <c>--adapter</c> folder (when given) through the loaded plugins. Dispose the returned plugins handle after the model.
    /// </summary>
    public static (LlamaForCausalLM Model, ITextTokenizer Tokenizer, IDisposable? Plugins) OpenWithAdapter(string verb, string dir, string? adapterDir, CliContext context,
        Microsoft.Extensions.Configuration.IConfiguration plugins, QuantizeArgs? quantize = null)
    {
        if (adapterDir is not null && !Directory.Exists(adapterDir)) throw new CliException($"{verb}: option '--adapter': '{adapterDir}' is not a folder");
        bool quantizedFolder = Directory.Exists(dir) && QuantizedModelFolder.ReadQuantizationConfig(dir) is not null;
        if (adapterDir is null && quantize is null && !quantizedFolder)
        {
            var (plain, tok) = Open(verb, dir, keepStoredDtype: true);
            return (plain, tok, null);
        }
        var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, plugins);
        LlamaForCausalLM? model = null;
        try
        {
            (model, var tokenizer) = Open(verb, dir, catalog, keepStoredDtype: true);
            quantize?.Apply(verb, catalog, model);
            if (adapterDir is not null)
            {
                RefuseNonFiniteAdapter(verb, adapterDir, AdapterAttachment.AttachWith(catalog, adapterDir, model));
                RefuseSaturated(verb, $"the model with the adapter '{adapterDir}'", model, "");
            }
            return (model, tokenizer, catalog);
        }
        catch
        {
            model?.Dispose();
            catalog.Dispose();
            throw;
        }
    }

    /// <summary>
    /// After attaching an adapter: its own tensors (named as in adapter_model.safetensors) must be finite. Only the
    /// adapter's tensors are scanned; the base model's were checked when it loaded.
    /// </summary>
    public static void RefuseNonFiniteAdapter(string verb, string adapterDir, Peft.Abstractions.Methods.IAdapter adapter)
    {
        if (NonFiniteValuesException.FirstNonFinite(adapter.GetStateDict().Select(kv => (kv.Key, kv.Value))) is { } bad)
            throw new NonFiniteValuesException($"{verb}: the adapter '{adapterDir}' has non-finite values (NaN or infinity) in tensor '{bad}'");
    }

    /// <summary>
    /// Finite weights can still give non-finite outputs (lora_alpha = 1e30: scaling·B·A·x reaches ~1e29 and
    /// mean(h²) in the next RMSNorm overflows float32). A probe forward pass finds the first such layer.
    /// </summary>
    public static void RefuseSaturated(string verb, string what, LlamaForCausalLM model, string consequence)
    {
        if (model.FirstSaturatedLayer() is not { } bad) return;
        var how = double.IsFinite(bad.MaxAbs)
            ? FormattableString.Invariant($"reaches |h| = {bad.MaxAbs:0.###e+00}, whose square overflows float32 in the next RMSNorm")
            : "holds NaN or infinity";
        throw new NonFiniteValuesException(
            $"{verb}: {what} produces non-finite values: the output of decoder layer {bad.Layer} (model.layers.{bad.Layer}) {how} (an adapter's lora_alpha or weights out of range?){consequence}");
    }
}
