using System.Text.Json.Nodes;
using Peft.Abstractions.Quantization;
using Peft.Host.Cli;
using Peft.Host.Composition;
using Peft.Host.Plugins;
using Peft.Host.Configuration;
using Peft.Host.Model;

namespace Peft.Host.Commands;

/// <summary><c>peft merge --model DIR --adapter DIR --out DIR</c>: fold an adapter into the base weights and write a full HF model folder.</summary>
public sealed class MergeCommand : ICliCommand
{
    public string Name => "merge";
    public string Summary => "fold an adapter into the base model and write a full HF model folder";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite", "--requantize" };

    public string Help =>
        "usage: peft merge --model DIR --adapter DIR --out DIR [--dtype DTYPE] [--overwrite] [--quantize NAME [--block-size N] [--double-quant BOOL]] [--requantize] [--plugins DIR]...\n\n" +
        "Loads the base model and the adapter, merges W' = W + scaling * B @ A (a safe merge: it refuses\n" +
        "non-finite results), drops the adapter layers, and writes a complete HF model folder (config.json,\n" +
        "model.safetensors in the base model's dtype, the tokenizer files) that transformers and 'peft eval' load.\n" +
        "The output appears complete or not at all. The base is read in the output dtype (a bf16 folder stays bf16:\n" +
        "each layer's W + s·BA is computed in fp32 and rounded once, as PEFT's merge_and_unload keeps the dtype) and\n" +
        "written tensor by tensor, so memory is about the base model in its own dtype plus one layer in fp32.\n" +
        "On a quantized base (--quantize, or a folder written by 'peft quantize'), the base is dequantized and the\n" +
        "adapter added in fp32: the merged model is full precision. --requantize quantizes the merged weights again\n" +
        "and writes a quantized folder: smaller, but lossy (see docs/benchmarks.md for the measured loss).\n\n" +
        "options:\n" +
        "  --model DIR    the base HF model folder the adapter was trained on\n" +
        AdapterAttachment.Help + "\n" +
        "  --out DIR      the merged model folder to write (written under a temporary name, then renamed; an existing\n" +
        "                 one is replaced only if it holds nothing but a model folder's files; never an input folder)\n" +
        "  --dtype DTYPE  dtype of the merged weights: float32, bfloat16 or float16 (default: the base folder's dtype;\n" +
        "                 float32 when its tensors mix dtypes)\n" +
        "  --overwrite    replace --out even if it holds files merge did not write\n" +
        "  --plugins DIR  also load plugins from DIR, for the adapter's method (repeatable)\n" +
        QuantizeArgs.Help + "\n" +
        "  --requantize           write the merged model quantized again (needs a quantized base)\n\n" +
        "example:\n" +
        "  peft merge --model out/models/stories260K --adapter out/quickstart/adapter --out out/merged";

    public int Run(CommandArgs args, CliContext context)
    {
        var modelDir = args.Required("--model");
        var adapterDir = args.Required("--adapter");
        var outDir = args.Required("--out");
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        var overwrite = args.Flag("--overwrite");
        var quantize = QuantizeArgs.Parse(Name, args);
        bool requantize = args.Flag("--requantize");
        var dtypeName = args.Optional("--dtype");
        args.ThrowOnUnused();
        TorchSharp.torch.ScalarType? dtype = null;
        if (dtypeName is not null)
        {
            try { dtype = HfModelFolder.ParseDtype(dtypeName); }
            catch (ArgumentException) { throw new CliException($"{Name}: option '--dtype' has value '{dtypeName}': expected float32, bfloat16 or float16"); }
        }
        OutputFolderGuard.CheckModelFolderTarget(Name, "--out", outDir, overwrite, ("--model", modelDir), ("--adapter", adapterDir));

        var quantizedFolder = Directory.Exists(modelDir) ? QuantizedModelFolder.ReadQuantizationConfig(modelDir) : null;
        if (quantize is null && quantizedFolder is null)
        {
            if (requantize) throw new CliException($"{Name}: flag '--requantize' needs a quantized base (--quantize NAME or a folder written by 'peft quantize')");
            // Read in the output dtype (the folder's own when it has one): W' = W + s·BA is computed in fp32 per layer
            // and stored in that dtype, so no fp32 copy of the whole model exists; saving streams tensor by tensor.
            var storage = dtype ?? (Directory.Exists(modelDir) ? HfModelFolder.StoredDtype(modelDir) : null) ?? TorchSharp.torch.ScalarType.Float32;
            var (model, _) = ModelFolderArgs.Open(Name, modelDir, storageDtype: storage);
            using (model)
            {
                var (catalog, adapter) = AdapterAttachment.Attach(Name, adapterDir, model, context, pluginConfig);
                using (catalog)
                {
                    ModelFolderArgs.RefuseNonFiniteAdapter(Name, adapterDir, adapter);
                    SafeMerge(adapter);
                    ModelFolderArgs.RefuseSaturated(Name, $"merging '{adapterDir}' into '{modelDir}'", model, "; nothing was written");
                    HfModelFolder.Save(model, outDir, tokenizerFiles: Tokenization.TokenizerFolder.FilesIn(modelDir));
                }
            }
        }
        else
        {
            if (dtype is not null) throw new CliException($"{Name}: option '--dtype' applies to a full-precision base; a quantized base is merged in fp32 (or --requantize)");
            if (!Directory.Exists(adapterDir)) throw new CliException($"{Name}: option '--adapter': '{adapterDir}' is not a folder");
            using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, pluginConfig);
            var (model, _) = ModelFolderArgs.Open(Name, modelDir, catalog);
            using (model)
            {
                JsonObject? config = quantizedFolder;
                if (quantize is not null)
                {
                    quantize.Apply(Name, catalog, model);
                    if (requantize)
                        config = catalog.GetQuantizer(quantize.Name, "--quantize") is IQuantizedCheckpointReader writer
                            ? writer.QuantizationConfig(quantize.Section, QuantizedModelFolder.FullPrecisionSlots(model))
                            : throw new CliException($"{Name}: flag '--requantize': quantizer '{quantize.Name}' has no saved layout");
                }
                // Default: dequantize the base, then add the adapter in fp32 (a full-precision merged model).
                if (!requantize) QuantizedModelFolder.Dequantize(model);
                var adapter = AdapterAttachment.AttachWith(catalog, adapterDir, model);
                ModelFolderArgs.RefuseNonFiniteAdapter(Name, adapterDir, adapter);
                SafeMerge(adapter);   // on a quantized slot: W' = deq(W) + s·BA, quantized again
                ModelFolderArgs.RefuseSaturated(Name, $"merging '{adapterDir}' into '{modelDir}'", model, "; nothing was written");
                var tokenizerFiles = Tokenization.TokenizerFolder.FilesIn(modelDir);
                if (requantize) QuantizedModelFolder.Save(model, outDir, config!, tokenizerFiles);
                else HfModelFolder.Save(model, outDir, tokenizerFiles: tokenizerFiles);
            }
        }
        context.Out.WriteLine($"merged {adapterDir} into {modelDir}: {outDir}");
        return 0;
    }

    /// <summary>The safe merge refuses non-finite merged weights (an absurd lora_alpha): reported as the same one-line error.</summary>
    void SafeMerge(Peft.Abstractions.Methods.IAdapter adapter)
    {
        try { adapter.MergeAndUnload(safe: true); }
        catch (InvalidOperationException e) when (e.Message.Contains("non-finite", StringComparison.Ordinal))
        {
            throw new NonFiniteValuesException($"{Name}: {e.Message}");
        }
    }
}
