using System.Globalization;
using Microsoft.Extensions.Configuration;
using Peft.Host.Data;
using Peft.Host.Model;

namespace Peft.Bench;

/// <summary>What every variant trains: a randomly initialised Llama of stories15M's shape on random tokens.</summary>
public static class Workload
{
    public const int MaxPositions = 256;

    /// <summary>
    /// llama2.c's stories15M: dim 288, 6 layers, 6 heads (6 KV heads), hidden_dim 768, vocab 32000, seq_len 256,
    /// norm_eps 1e-5, classifier shared with the token embedding (tied). About 15.2 M parameters.
    /// </summary>
    public static LlamaConfig Stories15MShape() => new()
    {
        HiddenSize = 288,
        IntermediateSize = 768,
        NumHiddenLayers = 6,
        NumAttentionHeads = 6,
        NumKeyValueHeads = 6,
        VocabSize = 32000,
        MaxPositionEmbeddings = MaxPositions,
        RmsNormEps = 1e-5,
        TieWordEmbeddings = true,
    };

    /// <summary>
    /// <paramref name="count"/> sequences of <paramref name="seqLen"/> uniform random ids; labels = ids (plain
    /// causal LM: every position after the first counts), so every token of every batch is real, none is padding.
    /// </summary>
    public static TrainingDataSet RandomTokens(int count, int seqLen, int vocab, int seed)
    {
        var random = new Random(seed);
        var examples = new List<TokenizedExample>(count);
        for (int i = 0; i < count; i++)
        {
            var ids = new int[seqLen];
            for (int t = 0; t < seqLen; t++) ids[t] = random.Next(vocab);
            examples.Add(new TokenizedExample(ids, (int[])ids.Clone()));
        }
        return TrainingDataSet.FromExamples(examples, validation: null, padId: 0, shuffle: true, format: "text");
    }

    /// <summary>
    /// The configuration the composer and the trainer get, as <c>peft train</c> would read it from a JSON file:
    /// the variant's method section, AdamW (the default optimizer), a constant learning rate, gradient clipping at
    /// 1.0 (the default), no evaluation, no checkpoints, one metrics line at the end.
    /// </summary>
    public static IConfiguration Configuration(Variant variant, BenchOptions o, string outputDir)
    {
        static string S(int v) => v.ToString(CultureInfo.InvariantCulture);
        var values = new Dictionary<string, string?>(variant.MethodSection)
        {
            ["training:seed"] = S(o.Seed),
            ["training:batch_size"] = S(o.BatchSize),
            ["training:max_steps"] = S(o.WarmupSteps + o.Steps),
            ["training:learning_rate"] = "0.0001",
            ["training:lr_scheduler"] = "constant",
            ["training:checkpoint_every"] = "0",
            ["training:log_every"] = S(o.WarmupSteps + o.Steps),
            ["training:activation_checkpointing"] = variant.ActivationCheckpointing ? "true" : "false",
            ["output:dir"] = outputDir,
        };
        if (o.LossChunkTokens is { } chunk) values["training:loss_chunk_tokens"] = S(chunk);
        return new ConfigurationBuilder().AddInMemoryCollection(values).Build();
    }
}
