using Peft.Host.Cli;
using Peft.Host.Import;

namespace Peft.Host.Commands;

/// <summary><c>peft import-llama2c</c>: a llama2.c checkpoint + SentencePiece model -> an HF model folder.</summary>
public sealed class ImportLlama2cCommand : ICliCommand
{
    public string Name => "import-llama2c";
    public string Summary => "convert a llama2.c .bin checkpoint and its tokenizer.model into an HF model folder";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite" };

    public string Help =>
        """
        usage: peft import-llama2c --checkpoint FILE.bin --tokenizer FILE.model --out DIR

        Converts a llama2.c checkpoint (the legacy .bin that llama2.c's run.c reads: a 7-int32 header, then
        float32 weights) into a Hugging Face LlamaForCausalLM folder: config.json (rope_theta 10000,
        rms_norm_eps 1e-5, bos 1, eos 2, max_position_embeddings = seq_len, float32), model.safetensors with HF
        tensor names (q/k rows permuted from llama2.c's interleaved rotary layout to HF's rotate-half layout),
        and a copy of the SentencePiece model as tokenizer.model. DIR is written under a temporary name and renamed
        into place. An existing DIR is replaced only if it holds nothing but a model folder's files (a previous
        import or merge) or --overwrite is given; DIR may not be, contain or lie inside an input.

        options:
          --checkpoint FILE   llama2.c .bin checkpoint (e.g. stories260K.bin)
          --tokenizer FILE    SentencePiece tokenizer.model matching the checkpoint (e.g. tok512.model)
          --out DIR           output folder
          --overwrite         replace DIR even if it holds files this command did not write

        example:
          peft import-llama2c --checkpoint stories260K.bin --tokenizer tok512.model --out models/stories260K
        """;

    public int Run(CommandArgs args, CliContext context)
    {
        var checkpoint = args.Required("--checkpoint");
        var tokenizer = args.Required("--tokenizer");
        var outDir = args.Required("--out");
        var overwrite = args.Flag("--overwrite");
        args.ThrowOnUnused();
        if (!File.Exists(checkpoint)) throw new CliException($"{Name}: option '--checkpoint': file '{checkpoint}' not found");
        if (!File.Exists(tokenizer)) throw new CliException($"{Name}: option '--tokenizer': file '{tokenizer}' not found");
        OutputFolderGuard.CheckModelFolderTarget(Name, "--out", outDir, overwrite, ("--checkpoint", checkpoint), ("--tokenizer", tokenizer));

        Llama2cImporter.Header h;
        try
        {
            h = Llama2cImporter.Import(checkpoint, tokenizer, outDir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{Name}: cannot write '{outDir}': {e.Message}");
        }
        context.Out.WriteLine(
            $"wrote {outDir}: dim {h.Dim}, hidden {h.HiddenDim}, layers {h.Layers}, heads {h.Heads} (kv {h.KvHeads}), " +
            $"vocab {h.VocabSize}, context {h.SeqLen}, {(h.SharedClassifier ? "tied" : "separate")} output head");
        return 0;
    }
}
