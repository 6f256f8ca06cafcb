using Peft.Host.Model;
using Peft.Host.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Generation;

/// <summary>Settings of one generation run. Defaults are llama2.c's run: 256 tokens, temperature 1.0, top-p 0.9.</summary>
public sealed record GenerationOptions
{
    /// <summary>Tokens to generate after the prompt (fewer when a stop token comes first or the context is full).</summary>
    public int MaxNewTokens { get; init; } = 256;

    /// <summary>0: greedy argmax; otherwise the logits are divided by it before sampling.</summary>
    public float Temperature { get; init; } = 1.0f;

    /// <summary>Nucleus sampling mass in (0, 1); 0 or 1 samples from the whole distribution.</summary>
    public float TopP { get; init; } = 0.9f;

    /// <summary>Seed of the sampler's xorshift generator (non-zero); the same seed gives the same text.</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>More token ids that end generation (a chat template's end-of-turn token), besides BOS and EOS.</summary>
    public IReadOnlyList<int> StopIds { get; init; } = [];
}

/// <summary>
/// Autoregressive decoding with a KV cache, following llama2.c's <c>run.c</c>: the sequence starts with BOS
/// (then the prompt's tokens, if any), the prompt is run through the model once, then each sampled token is fed
/// back alone. Generation stops after <see cref="GenerationOptions.MaxNewTokens"/> tokens, at a BOS or EOS token
/// (not emitted), or when the last position of the context (max_position_embeddings) has been used.
/// </summary>
public sealed class TextGenerator(ICausalLanguageModel model, ITextTokenizer tokenizer)
{
    /// <summary>
    /// Generate from <paramref name="prompt"/> (null or empty: from BOS alone). Returns the text llama2.c prints:
    /// the prompt followed by the continuation. <paramref name="onText"/> receives it piece by piece as it is
    /// produced (the pieces concatenate to the returned text).
    /// </summary>
    /// <summary>How many new tokens the last <see cref="Generate"/> call produced (for the tokens/s summary).</summary>
    public int GeneratedTokens { get; private set; }

    public string Generate(string? prompt, GenerationOptions options, Action<string>? onText = null)
    {
        // BOS first when the tokenizer adds one; a tokenizer without BOS (Qwen2.5) starts at the prompt's first token,
        // and an empty prompt then starts from BosId (config.json's bos_token_id: <|endoftext|> for Qwen2), as HF's generate does.
        var encoded = string.IsNullOrEmpty(prompt) ? [] : tokenizer.Encode(prompt);
        bool start = tokenizer.PrependsBos || encoded.Count == 0;
        var promptIds = new List<int>();
        if (start) promptIds.Add(tokenizer.BosId);
        promptIds.AddRange(encoded);
        var decoder = new IncrementalDecoder(tokenizer);
        foreach (var id in promptIds.Skip(start ? 1 : 0)) Emit(decoder.Add(id));
        GenerateIds(promptIds, options, id => Emit(decoder.Add(id)));   // sets GeneratedTokens
        Emit(decoder.Flush());
        return decoder.Text;

        void Emit(string piece)
        {
            if (piece.Length > 0) onText?.Invoke(piece);
        }
    }

    /// <summary>
    /// Continue <paramref name="promptIds"/> (which should start with BOS) and return only the new ids.
    /// </summary>
    public IReadOnlyList<int> GenerateIds(IReadOnlyList<int> promptIds, GenerationOptions options, Action<int>? onToken = null)
    {
        if (promptIds.Count == 0) throw new ArgumentException("the prompt needs at least one token (BOS)");
        if (options.MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(options), "MaxNewTokens must be >= 0");
        int context = model.Shape.MaxPositionEmbeddings;
        if (promptIds.Count > context)
            throw new ArgumentException($"the prompt has {promptIds.Count} tokens but the model's context (max_position_embeddings) is {context}");
        var stop = new HashSet<int> { tokenizer.BosId, tokenizer.EosId };
        if (model is LlamaForCausalLM llama) stop.UnionWith(llama.Config.EosTokenIds);
        stop.UnionWith(options.StopIds);

        var sampler = new TokenSampler(options.Temperature, options.TopP, options.Seed);
        var generated = new List<int>();
        GeneratedTokens = 0;
        if (options.MaxNewTokens == 0) return generated;

        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            using var noGrad = torch.no_grad();
            using var cache = model.CreateKvCache(1);
            float[] logits = LastLogits(promptIds.Select(i => (long)i).ToArray(), cache);
            while (true)
            {
                int next = sampler.Sample(logits);
                if (stop.Contains(next)) break;
                generated.Add(next);
                onToken?.Invoke(next);
                // run.c also never feeds a token beyond the last position of the context.
                if (generated.Count == options.MaxNewTokens || cache.Length >= context) break;
                logits = LastLogits([next], cache);
            }
        }
        finally
        {
            model.Module.train(wasTraining);
        }
        GeneratedTokens = generated.Count;   // also for generate --chat, which calls GenerateIds directly
        return generated;
    }

    float[] LastLogits(long[] ids, KvCache cache)
    {
        using var scope = torch.NewDisposeScope();
        var input = torch.tensor(ids, ScalarType.Int64, model.Device).unsqueeze(0); // (1, T)
        var logits = model.Forward(input, cache);                                    // (1, T, V)
        var last = logits[0, -1].cpu().data<float>().ToArray();
        if (!Array.TrueForAll(last, float.IsFinite))
            throw new NonFiniteValuesException($"the model's output (logits) after {cache.Length} tokens holds NaN or infinity: the model or its adapter produces non-finite values (an adapter's lora_alpha or weights out of range?)");
        return last;
    }
}

/// <summary>
/// Turns ids into text as they arrive. SentencePiece decoding is not piece-by-piece (byte-fallback pieces form
/// one character together, and the first piece loses its leading space), so it re-decodes the whole sequence
/// and hands out what is new, holding back a tail that is still an incomplete UTF-8 sequence.
/// </summary>
public sealed class IncrementalDecoder(ITextTokenizer tokenizer)
{
    readonly List<int> _ids = new();
    string _emitted = "";

    public string Text => tokenizer.Decode(_ids);

    public string Add(int id)
    {
        _ids.Add(id);
        var text = Text;
        if (text.EndsWith('\uFFFD') || !text.StartsWith(_emitted, StringComparison.Ordinal)) return "";
        var piece = text[_emitted.Length..];
        _emitted = text;
        return piece;
    }

    /// <summary>Whatever is left after the last id (a final incomplete character, as the decoder renders it).</summary>
    public string Flush()
    {
        var text = Text;
        if (!text.StartsWith(_emitted, StringComparison.Ordinal)) return "";
        var piece = text[_emitted.Length..];
        _emitted = text;
        return piece;
    }
}
