using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Model;

namespace Peft.Host.Commands;

/// <summary><c>peft merge --model DIR --adapter DIR --out DIR</c>: fold an adapter into the base weights and write a full HF model folder.</summary>
public sealed class MergeCommand : ICliCommand
{
    public string Name => "merge";
    public string Summary => "fold an adapter into the base model and write a full HF model folder";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite" };

    public string Help =>
        "usage: peft merge --model DIR --adapter DIR --out DIR [--overwrite] [--plugins DIR]...\n\n" +
        "Loads the base model and the adapter, merges W' = W + scaling * B @ A (a safe merge: it refuses\n" +
        "non-finite results), drops the adapter layers, and writes a complete HF model folder (config.json,\n" +
        "model.safetensors in the base model's dtype, the tokenizer files) that transformers and 'peft eval' load.\n" +
        "The output appears complete or not at all.\n\n" +
        "options:\n" +
        "  --model DIR    the base HF model folder the adapter was trained on\n" +
        AdapterAttachment.Help + "\n" +
        "  --out DIR      the merged model folder to write (written under a temporary name, then renamed; an existing\n" +
        "                 one is replaced only if it holds nothing but a model folder's files; never an input folder)\n" +
        "  --overwrite    replace --out even if it holds files merge did not write\n" +
        "  --plugins DIR  also load plugins from DIR, for the adapter's method (repeatable)\n\n" +
        "example:\n" +
        "  peft merge --model out/models/stories260K --adapter out/quickstart/adapter --out out/merged";

    public int Run(CommandArgs args, CliContext context)
    {
        var modelDir = args.Required("--model");
        var adapterDir = args.Required("--adapter");
        var outDir = args.Required("--out");
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        var overwrite = args.Flag("--overwrite");
        args.ThrowOnUnused();
        OutputFolderGuard.CheckModelFolderTarget(Name, "--out", outDir, overwrite, ("--model", modelDir), ("--adapter", adapterDir));

        var (model, _) = ModelFolderArgs.Open(Name, modelDir);
        using (model)
        {
            var (catalog, adapter) = AdapterAttachment.Attach(Name, adapterDir, model, context, pluginConfig);
            ModelFolderArgs.RefuseNonFiniteAdapter(Name, adapterDir, model, catalog);
            using (catalog)
            {
                // the safe merge refuses non-finite merged weights (an absurd lora_alpha): the same one-line error
                try { adapter.MergeAndUnload(safe: true); }
                catch (InvalidOperationException e) when (e.Message.Contains("non-finite", StringComparison.Ordinal))
                {
                    throw new NonFiniteValuesException($"{Name}: {e.Message}");
                }
                HfModelFolder.Save(model, outDir, tokenizerFiles: Tokenization.TokenizerFolder.FilesIn(modelDir));
            }
        }
        context.Out.WriteLine($"merged {adapterDir} into {modelDir}: {outDir}");
        return 0;
    }
}
