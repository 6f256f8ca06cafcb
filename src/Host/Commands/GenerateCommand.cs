using System.Diagnostics;
using System.Globalization;
using Peft.Host.Cli;
using Peft.Host.Configuration;
using Peft.Host.Generation;

namespace Peft.Host.Commands;

/// <summary><c>peft generate</c>: sample text from an HF model folder, printed as llama2.c's run prints it.</summary>
public sealed class GenerateCommand : ICliCommand
{
    public string Name => "generate";
    public string Summary => "generate text from a model folder (greedy or temperature + top-p sampling)";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--chat" };

    public string Help =>
        """
        usage: peft generate --model DIR [--adapter DIR [--plugins DIR]...] [--quantize NAME [--block-size N] [--double-quant BOOL]] [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--chat [--chat-template NAME]]

        Generates from an HF model folder (config.json, model.safetensors, tokenizer.model) with a KV cache.
        The sequence starts with BOS, then the prompt's tokens. stdout gets ONLY the text, as llama2.c's run
        prints it: the prompt followed by the continuation, then a newline (streamed as it is produced).
        Generation stops after N new tokens, at a BOS or EOS token, or when the context is full.
        A summary (tokens, tokens/s) goes to stderr.

        options:
          --model DIR            HF model folder
          --adapter DIR          HF PEFT adapter folder applied to the model
          --plugins DIR          also load plugins from DIR, for the adapter's method (repeatable; or
                                 plugins:directories through PEFT_plugins__directories__0)
          --prompt TEXT          text to continue (default: none, start from BOS alone)
          --max-new-tokens N     tokens to generate after the prompt (default 256)
          --temperature T        0 = greedy argmax; otherwise logits / T before sampling (default 1.0)
          --top-p P              nucleus sampling mass in (0, 1); 0 or 1 = full distribution (default 0.9)
          --seed S               sampler seed, a positive integer; the same seed gives the same text
                                 (default: from the clock). Same generator and sampler as llama2.c's run.c.
          --chat                 the prompt is a user message: format it with the model's chat template
                                 (recognised from tokenizer_config.json: Llama 3 headers or ChatML) plus the
                                 assistant header, and print only the reply (stops at the end-of-turn token)
          --chat-template NAME   with --chat: llama3, chatml or plain (any tokenizer) instead of the recognised template
          --quantize NAME        quantize the base's decoder projections in memory first (nf4, fp4, int8;
                                 see 'peft plugins'); a folder written by 'peft quantize' loads quantized as it is
          --block-size N         weights per absmax block for nf4/fp4 (default 64)
          --double-quant BOOL    also quantize the absmax values (nf4/fp4; default true)

        example:
          peft generate --model models/stories260K --temperature 0
          peft generate --model models/stories260K --prompt "Once upon a time" --temperature 1.0 --top-p 0.9 --seed 42
          peft generate --model ~/models/Llama-3.2-1B-Instruct --chat --prompt "Name three colours." --temperature 0
        """;

    public int Run(CommandArgs args, CliContext context)
    {
        var dir = args.Required("--model");
        var prompt = args.Optional("--prompt");
        int maxNew = args.Int("--max-new-tokens", 256, min: 0);
        double temperature = args.Double("--temperature", 1.0, min: 0);
        double topP = args.Double("--top-p", 0.9, min: 0, max: 1);
        var seedText = args.Optional("--seed");
        var adapterDir = args.Optional("--adapter");
        bool chat = args.Flag("--chat");
        var chatTemplateName = args.Optional("--chat-template");
        if (chatTemplateName is not null && !chat) throw new CliException($"{Name}: option '--chat-template' needs --chat");
        var quantize = QuantizeArgs.Parse(Name, args);
        var pluginConfig = HostConfiguration.LoadPlugins(args);
        args.ThrowOnUnused();
        ulong seed;
        if (seedText is null) seed = (ulong)DateTime.UtcNow.Ticks | 1;
        else if (!ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out seed) || seed == 0)
            throw new CliException($"{Name}: option '--seed' has value '{seedText}': expected a positive integer");

        var (model, tokenizer, plugins) = ModelFolderArgs.OpenWithAdapter(Name, dir, adapterDir, context, pluginConfig, quantize);
        using (plugins)
        using (model)
        {
            var options = new GenerationOptions { MaxNewTokens = maxNew, Temperature = (float)temperature, TopP = (float)topP, Seed = seed };
            var generator = new TextGenerator(model, tokenizer);
            var watch = Stopwatch.StartNew();
            try
            {
                if (chat) ChatGeneration.Reply(generator, tokenizer, chatTemplateName, prompt ?? "", options, piece =>
                {
                    context.Out.Write(piece);
                    context.Out.Flush();
                });
                else generator.Generate(prompt, options, piece =>
                {
                    context.Out.Write(piece);
                    context.Out.Flush();
                });
            }
            catch (ArgumentException e)
            {
                throw new CliException($"{Name}: {e.Message}");
            }
            context.Out.Write('\n');
            context.Out.Flush();
            var seconds = watch.Elapsed.TotalSeconds;
            context.Error.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"generate: {generator.GeneratedTokens} tokens in {seconds:F2} s ({generator.GeneratedTokens / Math.Max(seconds, 1e-9):F1} tokens/s)"));
        }
        return 0;
    }
}
