using System.Globalization;
using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Evaluation;

namespace Peft.Host.Commands;

/// <summary><c>peft eval</c>: loss and perplexity of a model folder on a text file.</summary>
public sealed class EvalCommand : ICliCommand
{
    public string Name => "eval";
    public string Summary => "loss and perplexity of a model folder on a .txt or .jsonl file";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--json" };

    public string Help =>
        """
        usage: peft eval --model DIR [--adapter DIR [--plugins DIR]...] [--quantize NAME [--block-size N] [--double-quant BOOL]] --data FILE [--json]

        Evaluates next-token prediction. Documents: in a .txt file, blocks separated by blank lines (each
        trimmed, inner newlines kept), or, when the file contains <|endoftext|>, the parts between those
        separators (TinyStories style; the separator is not scored); in a .jsonl file, the "text" field of each
        line. A .jsonl of instruction rows ("instruction", "input", "output", as train reads them) is scored as
        training scores it: the Alpaca prompt is context, the loss covers the response tokens and EOS. Each document is
        tokenized as BOS + tokens (no EOS). loss = mean negative log-likelihood (nats) over every predicted token
        of every document (token-weighted); perplexity = exp(loss); tokens = number of predicted tokens.
        A document longer than the context (max_position_embeddings) is cut into windows; each window after the
        first starts with the previous window's last token as context, so every token is predicted once.

        options:
          --model DIR    HF model folder (config.json, model.safetensors, tokenizer.model)
          --adapter DIR  HF PEFT adapter folder applied to the model (e.g. out/quickstart/adapter)
          --plugins DIR  also load plugins from DIR, for the adapter's method (repeatable; or plugins:directories
                         through PEFT_plugins__directories__0)
          --data FILE    .txt or .jsonl evaluation file
          --json         also print {"loss": ..., "perplexity": ..., "tokens": ..., "tokens_per_second": ...} as the last line
          --quantize NAME        quantize the base's decoder projections in memory first (nf4, fp4, int8;
                                 see 'peft plugins'); a folder written by 'peft quantize' loads quantized as it is
          --block-size N         weights per absmax block for nf4/fp4 (default 64)
          --double-quant BOOL    also quantize the absmax values (nf4/fp4; default true)

        example:
          peft eval --model models/stories260K --data tinystories_valid.txt --json
        """;

    public int Run(CommandArgs args, CliContext context)
    {
        var dir = args.Required("--model");
        var data = args.Required("--data");
        bool json = args.Flag("--json");
        var adapterDir = args.Optional("--adapter");
        var quantize = QuantizeArgs.Parse(Name, args);
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        args.ThrowOnUnused();
        if (!File.Exists(data)) throw new CliException($"{Name}: option '--data': file '{data}' not found");
        bool instructions = EvalDocuments.IsInstructionFile(data);
        var documents = instructions ? [] : EvalDocuments.Read(data);

        Training.LibTorchThreads.Apply();
        var (model, tokenizer, plugins) = ModelFolderArgs.OpenWithAdapter(Name, dir, adapterDir, context, pluginConfig, quantize);
        using (plugins)
        using (model)
        {
            int rows = 0;
            var result = instructions ? EvaluateInstructions(model, tokenizer, data, out rows) : Evaluator.Evaluate(model, tokenizer, documents);
            if (instructions) documents = new string[rows];
            if (!double.IsFinite(result.Loss) && result.Tokens > 0)
                throw new Model.NonFiniteValuesException($"{Name}: the loss is {result.Loss.ToString(CultureInfo.InvariantCulture)}: the model{(adapterDir is null ? "" : " with the adapter")} produces non-finite logits (an adapter's lora_alpha or weights out of range?)");
            var inv = CultureInfo.InvariantCulture;
            context.Out.WriteLine($"documents   {documents.Count}");
            context.Out.WriteLine($"tokens      {result.Tokens}");
            context.Out.WriteLine(string.Create(inv, $"loss        {result.Loss:F6}"));
            context.Out.WriteLine(string.Create(inv, $"perplexity  {result.Perplexity:F6}"));
            if (result.Seconds > 0) context.Out.WriteLine(string.Create(inv, $"tokens/s    {result.TokensPerSecond:F0} ({result.Seconds:F2} s, no autograd, batches of {Evaluator.DefaultBatchSize})"));
            if (json)
            {
                var o = new JsonObject { ["loss"] = result.Loss, ["perplexity"] = result.Perplexity, ["tokens"] = result.Tokens };
                if (result.Seconds > 0) o["tokens_per_second"] = Math.Round(result.TokensPerSecond, 1);
                context.Out.WriteLine(o.ToJsonString());
            }
        }
        return 0;
    }

    /// <summary>
    /// Instruction rows scored as training scores them: the Alpaca prompt is context, the loss is the token-weighted
    /// mean over the response tokens and EOS (the held-out loss <c>peft train</c> prints, on another file).
    /// </summary>
    static EvalResult EvaluateInstructions(Model.LlamaForCausalLM model, Tokenization.ITextTokenizer tokenizer, string path, out int rows)
    {
        var loaded = Data.InstructionDataset.Load(path, tokenizer, model.Config.MaxPositionEmbeddings);
        rows = loaded.Examples.Count;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (loss, tokens) = Training.Trainer.Evaluate(model, loaded.Examples, batchSize: 8, maxBatches: 0, padId: tokenizer.EosId);
        return new EvalResult(loss, Math.Exp(loss), tokens) { Seconds = clock.Elapsed.TotalSeconds };
    }
}
