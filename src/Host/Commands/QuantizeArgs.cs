using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Host.Cli;
using Peft.Host.Composition;
using Peft.Host.Model;
using Peft.Host.Plugins;

namespace Peft.Host.Commands;

/// <summary>
/// <c>--quantize NAME [--block-size N] [--double-quant true|false]</c> for eval, generate and merge: quantize the
/// loaded model's base with a quantizer plugin (nf4, fp4, int8, ... whatever the catalog has), exactly as the
/// <c>quantization</c> JSON section would (<c>block_size</c> / <c>double_quant</c> are passed only when given, and
/// the quantizer binds them strictly).
/// </summary>
internal sealed record QuantizeArgs(string Name, IConfigurationSection Section)
{
    public const string Help =
        "  --quantize NAME        quantize the base's decoder projections in memory first (nf4, fp4, int8: see 'peft plugins')\n" +
        "  --block-size N         weights per absmax block for nf4/fp4 (default 64)\n" +
        "  --double-quant BOOL    quantize the absmax values too (nf4/fp4; default true)";

    /// <summary>The flags, or null without --quantize (then --block-size / --double-quant are refused).</summary>
    public static QuantizeArgs? Parse(string verb, CommandArgs args)
    {
        var name = args.Optional("--quantize");
        var block = args.Optional("--block-size");
        var dq = args.Optional("--double-quant");
        if (name is null)
        {
            if (block is not null) throw new CliException($"{verb}: option '--block-size' needs --quantize");
            if (dq is not null) throw new CliException($"{verb}: option '--double-quant' needs --quantize");
            return null;
        }
        if (string.IsNullOrWhiteSpace(name)) throw new CliException($"{verb}: option '--quantize' needs a quantizer name");
        if (dq is not null && dq is not ("true" or "false"))
            throw new CliException($"{verb}: option '--double-quant' has value '{dq}': expected true or false");
        if (block is not null && !int.TryParse(block, out _))
            throw new CliException($"{verb}: option '--block-size' has value '{block}': expected an integer");
        var pairs = new Dictionary<string, string?> { ["quantization:name"] = name.Trim() };
        if (block is not null) pairs["quantization:block_size"] = block;
        if (dq is not null) pairs["quantization:double_quant"] = dq;
        var root = new ConfigurationBuilder().AddInMemoryCollection(pairs).Build();
        return new QuantizeArgs(name.Trim(), root.GetSection("quantization"));
    }

    /// <summary>Quantize <paramref name="model"/> with the named quantizer from <paramref name="catalog"/>.</summary>
    public void Apply(string verb, PluginCatalog catalog, LlamaForCausalLM model)
    {
        var quantizer = catalog.GetQuantizer(Name, "--quantize");
        PeftComposer.ApplyQuantization(quantizer, Section, model);
    }
}
