using Peft.Host.Model;
using Peft.Host.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Evaluation;

/// <summary>Token-weighted mean negative log-likelihood (nats per token), its perplexity, and the tokens it averages.</summary>
public sealed record EvalResult(double Loss, double Perplexity, long Tokens);

/// <summary>
/// Language-model evaluation: each document is tokenized as [BOS] + tokens (no EOS) and every token after BOS is
/// predicted from the ones before it; loss = sum of -log p(token | prefix) over every predicted token of every
/// document / number of predicted tokens; perplexity = exp(loss).
/// A document longer than the context (max_position_embeddings) is split into windows of at most that many
/// tokens; each window after the first begins with the last token of the previous window (as context, not
/// predicted again), so every token is predicted exactly once, with positions restarting at 0 in each window.
/// </summary>
public static class Evaluator
{
    public static EvalResult Evaluate(ICausalLanguageModel model, ITextTokenizer tokenizer, IEnumerable<string> documents, int? contextLength = null)
    {
        int context = contextLength ?? model.Shape.MaxPositionEmbeddings;
        if (context < 2) throw new ArgumentOutOfRangeException(nameof(contextLength), $"context length {context} must be at least 2");
        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            using var noGrad = torch.no_grad();
            double totalNll = 0;
            long totalTokens = 0;
            foreach (var doc in documents)
            {
                var ids = new List<int>();
                if (tokenizer.PrependsBos) ids.Add(tokenizer.BosId);   // no BOS (Qwen2.5): the first token is context only, as in HF
                ids.AddRange(tokenizer.Encode(doc));
                if (ids.Count < 2) continue;                          // nothing to predict
                foreach (var (start, length) in Windows(ids.Count, context))
                {
                    var (nll, count) = WindowNll(model, ids.GetRange(start, length));
                    totalNll += nll;
                    totalTokens += count;
                }
            }
            if (totalTokens == 0) throw new ArgumentException("no tokens to evaluate");
            double loss = totalNll / totalTokens;
            return new EvalResult(loss, Math.Exp(loss), totalTokens);
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

    /// <summary>Sum of -log p(ids[i] | ids[..i]) for i = 1..n-1 within one window, and n-1.</summary>
    static (double Nll, long Count) WindowNll(ICausalLanguageModel model, List<int> window)
    {
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(window.Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device).unsqueeze(0); // (1, n)
        var logits = model.Logits(ids)[0];                          // (n, V)
        var predicting = logits.narrow(0, 0, window.Count - 1);     // positions 0..n-2 predict tokens 1..n-1
        var targets = ids[0].narrow(0, 1, window.Count - 1);        // (n-1)
        var nll = nn.functional.cross_entropy(predicting, targets, reduction: nn.Reduction.Sum);
        return (nll.to(ScalarType.Float64).item<double>(), window.Count - 1);
    }
}
