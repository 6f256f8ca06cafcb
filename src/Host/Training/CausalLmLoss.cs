using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Training;

/// <summary>
/// Next-token cross entropy over shifted labels, as HF's causal-LM loss:
/// <code>
///   logits (B, T, V), labels (B, T)  →  Σ_{b, t ≥ 1, labels[b,t] ≠ −100} −log softmax(logits[b, t−1])[labels[b, t]]
/// </code>
/// This returns the SUM; the trainer divides by the number of counted tokens of the whole optimizer step
/// (all accumulated micro-batches together), so the gradient is that of the mean over every counted token
/// of the step, however the tokens fall into micro-batches ("token-weighted" accumulation, as HF transformers
/// does with num_items_in_batch since v4.46). Averaging per-micro-batch means would weight a token of a short
/// micro-batch more than one of a long micro-batch.
/// </summary>
public static class CausalLmLoss
{
    public const long IgnoreIndex = -100;

    /// <summary>Summed cross entropy (0-d float32 tensor, differentiable) of the counted positions.</summary>
    public static Tensor Sum(Tensor logits, Tensor labels)
    {
        if (logits.dim() != 3) throw new ArgumentException($"logits must be (batch, seq, vocab), got [{string.Join(", ", logits.shape)}]", nameof(logits));
        if (labels.dim() != 2 || labels.shape[0] != logits.shape[0] || labels.shape[1] != logits.shape[1])
            throw new ArgumentException($"labels [{string.Join(", ", labels.shape)}] do not match logits [{string.Join(", ", logits.shape)}]", nameof(labels));
        using var scope = torch.NewDisposeScope();
        long vocab = logits.shape[2];
        // Shift the labels, not the logits: position t predicts labels[t+1], the last position predicts nothing
        // (IgnoreIndex). Slicing the (batch, seq, vocab) logits instead would copy them (and their gradient).
        var next = labels[.., 1..];                                                         // (B, T−1)
        var pad = torch.full(new long[] { labels.shape[0], 1 }, IgnoreIndex, labels.dtype, labels.device);
        var shiftedLabels = torch.cat([next, pad], 1).reshape(-1);                        // (B·T)
        var flatLogits = logits.reshape(-1, vocab);                                        // (B·T, V), a view
        if (flatLogits.dtype != ScalarType.Float32) flatLogits = flatLogits.to_type(ScalarType.Float32);
        var sum = nn.functional.cross_entropy(flatLogits, shiftedLabels, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum);
        return sum.MoveToOuterDisposeScope();
    }
}
