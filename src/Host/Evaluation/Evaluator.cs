using Peft.Host.Model;
using Peft.Host.Training;
using Peft.Host.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Evaluation;

/// <summary>
/// Token-weighted mean negative log-likelihood (nats per token), its perplexity, the tokens it averages, and the
/// throughput: predicted tokens per second of wall time (tokenization excluded).
/// </summary>
public sealed record EvalResult(double Loss, double Perplexity, long Tokens)
{
    public double Seconds { get; init; }
    public double TokensPerSecond => Seconds > 0 ? Tokens / Seconds : double.NaN;
}

/// <summary>
/// Language-model evaluation: each document is tokenized as [BOS] + tokens (no EOS) and every token after BOS is
/// predicted from the ones before it; loss = sum of -log p(token | prefix) over every predicted token of every
/// document / number of predicted tokens; perplexity = exp(loss).
/// A document longer than the context (max_position_embeddings) is split into windows of at most that many
/// tokens; each window after the first begins with the last token of the previous window (as context, not
/// predicted again), so every token is predicted exactly once, with positions restarting at 0 in each window.
/// Windows run without autograd, <see cref="DefaultBatchSize"/> at a time (longest first, right-padded; a padded
/// position predicts nothing and, the attention being causal, changes nothing before it), through the chunked loss.
/// </summary>
public static class Evaluator
{
    public const int DefaultBatchSize = 8;

    public static EvalResult Evaluate(ICausalLanguageModel model, ITextTokenizer tokenizer, IEnumerable<string> documents, int? contextLength = null,
        int batchSize = DefaultBatchSize, int lossChunkTokens = CausalLmLoss.DefaultChunkTokens)
    {
        int context = contextLength ?? model.Shape.MaxPositionEmbeddings;
        if (context < 2) throw new ArgumentOutOfRangeException(nameof(contextLength), $"context length {context} must be at least 2");
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), $"batch size {batchSize} must be at least 1");
        var windows = new List<int[]>();
        foreach (var doc in documents)
        {
            var ids = new List<int>();
            if (tokenizer.PrependsBos) ids.Add(tokenizer.BosId);   // no BOS (Qwen2.5): the first token is context only, as in HF
            ids.AddRange(tokenizer.Encode(doc));
            if (ids.Count < 2) continue;                          // nothing to predict
            foreach (var (start, length) in Windows(ids.Count, context))
                windows.Add(ids.GetRange(start, length).ToArray());
        }
        if (windows.Count == 0) throw new ArgumentException("no tokens to evaluate");
        // Longest first: each batch holds windows of similar length, so little of it is padding.
        var order = windows.OrderByDescending(w => w.Length).ToList();

        bool wasTraining = model.Module.training;
        model.Module.eval();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            using var inference = torch.inference_mode();
            double totalNll = 0;
            long totalTokens = 0;
            for (int first = 0; first < order.Count; first += batchSize)
            {
                var batch = order.GetRange(first, Math.Min(batchSize, order.Count - first));
                var (nll, count) = BatchNll(model, batch, lossChunkTokens);
                totalNll += nll;
                totalTokens += count;
            }
            double loss = totalNll / totalTokens;
            return new EvalResult(loss, Math.Exp(loss), totalTokens) { Seconds = clock.Elapsed.TotalSeconds };
        }
        finally
        {
            model.Module.train(wasTraining);
        }
    }

    /// <summary>
    /// Windows (start, length) over a sequence of <paramref name="count"/> tokens: [0, C), [C-1, 2C-1), ...
    /// each overlapping the previous by one token, so window w predicts its tokens 1.. and together they predict
    /// tokens 1..count-1 once each.
    /// </summary>
    public static IEnumerable<(int Start, int Length)> Windows(int count, int context)
    {
        for (int start = 0; start < count - 1; start += context - 1)
            yield return (start, Math.Min(context, count - start));
    }

    /// <summary>
    /// Sum of -log p(w[i] | w[..i]) for i = 1..n-1 of every window w of the batch, and the number of those tokens.
    /// ids (B, L) right-padded with the window's last token; labels = ids with the padding set to IgnoreIndex.
    /// </summary>
    static (double Nll, long Count) BatchNll(ICausalLanguageModel model, List<int[]> batch, int lossChunkTokens)
    {
        using var scope = torch.NewDisposeScope();
        int length = batch.Max(w => w.Length);
        var ids = new long[batch.Count * length];
        var labels = new long[batch.Count * length];
        long count = 0;
        for (int b = 0; b < batch.Count; b++)
        {
            var w = batch[b];
            for (int t = 0; t < length; t++)
            {
                ids[b * length + t] = t < w.Length ? w[t] : w[^1];
                labels[b * length + t] = t < w.Length ? w[t] : CausalLmLoss.IgnoreIndex;
            }
            count += w.Length - 1;
        }
        var idsTensor = torch.tensor(ids, [batch.Count, length], ScalarType.Int64, model.Device);
        var labelsTensor = torch.tensor(labels, [batch.Count, length], ScalarType.Int64, model.Device);
        var nll = CausalLmLoss.Sum(model, idsTensor, labelsTensor, lossChunkTokens);
        return (nll.to(ScalarType.Float64).item<double>(), count);
    }
}
