using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Model;

namespace Peft.Host.Commands;

/// <summary><c>peft merge --model DIR --adapter DIR --out DIR</c>: fold an adapter into the base weights and write a full HF model folder.</summary>
public sealed class MergeCommand : ICliCommand
{
    public string Name => "merge";
    public string Summary => "fold an adapter into the base model and write a full HF model folder";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string>();

    public string Help =>
        "usage: peft merge --model DIR --adapter DIR --out DIR [--plugins DIR]...\n\n" +
        "Loads the base model and the adapter, merges W' = W + scaling * B @ A (a safe merge: it refuses\n" +
        "non-finite results), drops the adapter layers, and writes a complete HF model folder (config.json,\n" +
        "model.safetensors in the base model's dtype, the tokenizer files) that transformers and 'peft eval' load.\n" +
        "The output appears complete or not at all.\n\n" +
        "options:\n" +
        "  --model DIR    the base HF model folder the adapter was trained on\n" +
        AdapterAttachment.Help + "\n" +
        "  --out DIR      the merged model folder to write (replaced if it exists)\n" +
        "  --plugins DIR  also load plugins from DIR, for the adapter's method (repeatable)\n\n" +
        "example:\n" +
        "  peft merge --model out/models/stories260K --adapter out/quickstart/adapter --out out/merged";

    public int Run(CommandArgs args, CliContext context)
    {
        var modelDir = args.Required("--model");
        var adapterDir = args.Required("--adapter");
        var outDir = args.Required("--out");
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        args.ThrowOnUnused();
        if (Path.GetFullPath(outDir).TrimEnd('/') == Path.GetFullPath(modelDir).TrimEnd('/'))
            throw new CliException($"{Name}: option '--out': '{outDir}' is the base model folder; write the merged model elsewhere");

        var (model, _) = ModelFolderArgs.Open(Name, modelDir);
        using (model)
        {
            var (catalog, adapter) = AdapterAttachment.Attach(Name, adapterDir, model, context, pluginConfig);
            using (catalog)
            {
                adapter.MergeAndUnload(safe: true);
                HfModelFolder.Save(model, outDir, tokenizerFiles: Tokenization.TokenizerFolder.FilesIn(modelDir));
            }
        }
        context.Out.WriteLine($"merged {adapterDir} into {modelDir}: {outDir}");
        return 0;
    }
}
