using System.Globalization;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Quantization;
using Peft.Host.Cli;
using Peft.Host.Composition;
using Peft.Host.Configuration;
using Peft.Host.Model;
using Peft.Host.Plugins;

namespace Peft.Host.Commands;

/// <summary>
/// <c>peft quantize --model DIR --method nf4 --out DIR</c>: quantize a model folder's decoder projections and write
/// the folder in the quantizer's saved layout (bitsandbytes' for nf4/fp4), with <c>quantization_config</c> in
/// config.json; eval, generate, merge and train load it back without re-quantizing.
/// </summary>
public sealed class QuantizeCommand : ICliCommand
{
    public string Name => "quantize";
    public string Summary => "quantize a model folder (nf4/fp4 in bitsandbytes' layout) and write it";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite" };

    public string Help =>
        "usage: peft quantize --model DIR --method NAME [--block-size N] [--double-quant BOOL] [--compute-dtype DTYPE] --out DIR [--overwrite] [--plugins DIR]...\n\n" +
        "Quantizes every linear layer inside the decoder layers (embeddings, norms and lm_head stay full precision)\n" +
        "and writes a model folder: for nf4/fp4, bitsandbytes' saved tensors per layer (weight packed uint8,\n" +
        "weight.absmax, weight.quant_map, weight.nested_absmax, weight.nested_quant_map,\n" +
        "weight.quant_state.bitsandbytes__nf4) and config.json's quantization_config as transformers writes it.\n" +
        "The output appears complete or not at all.\n\n" +
        "options:\n" +
        "  --model DIR            full-precision HF model folder\n" +
        "  --method NAME          quantizer: nf4 (QLoRA's), fp4 (see 'peft plugins')\n" +
        "  --block-size N         weights per absmax block, a power of two in 32..4096 (default 64)\n" +
        "  --double-quant BOOL    also quantize the absmax values, 8-bit in blocks of 256 (default true)\n" +
        "  --compute-dtype DTYPE  float32 (default) or bfloat16: the dtype layers multiply in after loading\n" +
        "  --out DIR              the quantized model folder to write (written under a temporary name, then renamed;\n" +
        "                         an existing one is replaced only if it holds nothing but a model folder's files;\n" +
        "                         never the model folder, a folder inside it or one that contains it)\n" +
        "  --overwrite            replace --out even if it holds files quantize did not write\n" +
        "  --plugins DIR          also load plugins from DIR (repeatable)\n\n" +
        "example:\n" +
        "  peft quantize --model out/models/stories260K --method nf4 --out out/models/stories260K-nf4";

    public int Run(CommandArgs args, CliContext context)
    {
        var modelDir = args.Required("--model");
        var method = args.Required("--method");
        var block = args.Optional("--block-size");
        var dq = args.Optional("--double-quant");
        var compute = args.Optional("--compute-dtype");
        var outDir = args.Required("--out");
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        var overwrite = args.Flag("--overwrite");
        args.ThrowOnUnused();
        if (dq is not null && dq is not ("true" or "false"))
            throw new CliException($"{Name}: option '--double-quant' has value '{dq}': expected true or false");
        OutputFolderGuard.CheckModelFolderTarget(Name, "--out", outDir, overwrite, ("--model", modelDir));
        if (Directory.Exists(modelDir) && QuantizedModelFolder.ReadQuantizationConfig(modelDir) is not null)
            throw new CliException($"{Name}: option '--model': '{modelDir}' is already quantized (config.json has quantization_config)");

        var pairs = new Dictionary<string, string?> { ["quantization:name"] = method };
        if (block is not null) pairs["quantization:block_size"] = block;
        if (dq is not null) pairs["quantization:double_quant"] = dq;
        if (compute is not null) pairs["quantization:compute_dtype"] = compute;
        var section = new ConfigurationBuilder().AddInMemoryCollection(pairs).Build().GetSection("quantization");

        using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, pluginConfig);
        var quantizer = catalog.GetQuantizer(method, "--method");
        if (quantizer is not IQuantizedCheckpointReader writer)
            throw new CliException($"{Name}: option '--method': quantizer '{method}' has no saved layout (it cannot be written to a model folder)");

        // Read in the folder's own dtype (a bf16 folder: no fp32 copy of the model); each quantized layer replaces and
        // frees its full-precision one as it goes, and the folder is written tensor by tensor. Tensors that stay
        // full precision keep the folder's dtype, as transformers' torch_dtype does.
        var (model, _) = ModelFolderArgs.Open(Name, modelDir, keepStoredDtype: true);
        using (model)
        {
            PeftComposer.ApplyQuantization(quantizer, section, model);
            var quantized = model.LinearSlots.Where(s => model.GetLinear(s.Name) is IQuantizedLinear).ToList();
            var config = writer.QuantizationConfig(section, QuantizedModelFolder.FullPrecisionSlots(model));
            QuantizedModelFolder.Save(model, outDir, config, Tokenization.TokenizerFolder.FilesIn(modelDir));
            long weights = quantized.Sum(s => s.Parameters);
            context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"quantized {quantized.Count} linear layers ({weights:N0} weights) to {quantizer.Name} ({quantizer.BitsPerParameter(section):0.###} bits per weight): {outDir}"));
        }
        return 0;
    }
}
