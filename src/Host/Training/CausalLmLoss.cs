using Peft.Host.Model;
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
/// <para>
/// <see cref="Sum(ICausalLanguageModel, Tensor, Tensor, int)"/> runs the model too, and by default never builds
/// the (B·T, V) logits: only the counted positions' hidden states go through the head, <c>chunkTokens</c> at a
/// time (<see cref="ChunkedLinearCrossEntropy"/>); same loss and gradients as the plain path.
/// </para>
/// </summary>
public static class CausalLmLoss
{
    public const long IgnoreIndex = -100;

    /// <summary>Tokens per chunk of the chunked loss when training:loss_chunk_tokens is not set.</summary>
    public const int DefaultChunkTokens = 256;

    /// <summary>
    /// Summed loss of a batch: the model's forward and the loss. <paramref name="chunkTokens"/> &gt; 0 (and a model
    /// whose head can be applied apart): the head and CE over chunks of that many counted tokens; 0: full logits.
    /// </summary>
    public static Tensor Sum(ICausalLanguageModel model, Tensor inputIds, Tensor labels, int chunkTokens = DefaultChunkTokens)
    {
        if (chunkTokens <= 0 || model is not IHiddenStatesModel split) return Sum(model.Logits(inputIds), labels);
        using var scope = torch.NewDisposeScope();
        var hidden = split.HiddenStates(inputIds);                                           // (B, T, D) fp32
        return Sum(hidden, split.OutputHead, labels, chunkTokens).MoveToOuterDisposeScope();
    }

    /// <summary>Summed loss from the body's hidden states (B, T, D) through <paramref name="head"/>, <paramref name="chunkTokens"/> counted tokens at a time.</summary>
    public static Tensor Sum(Tensor hidden, Abstractions.Model.ILinearLayer head, Tensor labels, int chunkTokens)
    {
        if (labels.dim() != 2 || hidden.dim() != 3 || labels.shape[0] != hidden.shape[0] || labels.shape[1] != hidden.shape[1])
            throw new ArgumentException($"labels [{string.Join(", ", labels.shape)}] do not match hidden states [{string.Join(", ", hidden.shape)}]", nameof(labels));
        using var scope = torch.NewDisposeScope();
        var shifted = Shift(labels);                                                         // (B·T)
        var counted = shifted.ne(IgnoreIndex).nonzero().squeeze(1);                          // (N) row indices
        var rows = hidden.reshape(-1, hidden.shape[2]).index_select(0, counted);             // (N, D); backward scatters
        var targets = shifted.index_select(0, counted);                                      // (N)
        return ChunkedLinearCrossEntropy.Sum(rows, head, targets, chunkTokens).MoveToOuterDisposeScope();
    }

    /// <summary>Summed cross entropy (0-d float32 tensor, differentiable) of the counted positions.</summary>
    public static Tensor Sum(Tensor logits, Tensor labels)
    {
        if (logits.dim() != 3) throw new ArgumentException($"logits must be (batch, seq, vocab), got [{string.Join(", ", logits.shape)}]", nameof(logits));
        if (labels.dim() != 2 || labels.shape[0] != logits.shape[0] || labels.shape[1] != logits.shape[1])
            throw new ArgumentException($"labels [{string.Join(", ", labels.shape)}] do not match logits [{string.Join(", ", logits.shape)}]", nameof(labels));
        using var scope = torch.NewDisposeScope();
        long vocab = logits.shape[2];
        var shiftedLabels = Shift(labels);                                                 // (B·T)
        var flatLogits = logits.reshape(-1, vocab);                                        // (B·T, V), a view
        if (flatLogits.dtype != ScalarType.Float32) flatLogits = flatLogits.to_type(ScalarType.Float32);
        var sum = nn.functional.cross_entropy(flatLogits, shiftedLabels, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum);
        return sum.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Shift the labels, not the logits: position t predicts labels[t+1], the last position predicts nothing
    /// (IgnoreIndex). Slicing the (batch, seq, vocab) logits instead would copy them (and their gradient). (B, T) → (B·T).
    /// </summary>
    static Tensor Shift(Tensor labels)
    {
        using var scope = torch.NewDisposeScope();
        var next = labels[.., 1..];                                                         // (B, T−1)
        var pad = torch.full(new long[] { labels.shape[0], 1 }, IgnoreIndex, labels.dtype, labels.device);
        return torch.cat([next, pad], 1).reshape(-1).MoveToOuterDisposeScope();
    }
}
