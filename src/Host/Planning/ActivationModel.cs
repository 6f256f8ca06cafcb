using Peft.Abstractions.Model;

namespace Peft.Host.Planning;

/// <summary>How one decoder layer trains, for the activation count: do its weights train, and which of its linear slots carry an adapter of which rank.</summary>
public sealed record LayerTraining(bool WeightsTrain, IReadOnlyDictionary<LinearKind, int> AdapterRanks, double AdapterDropout = 0)
{
    public static readonly IReadOnlyDictionary<LinearKind, int> NoAdapters = new Dictionary<LinearKind, int>();
}

/// <summary>What the activation count needs to know of the run.</summary>
public sealed record ActivationInputs(
    PlanModel Model,
    IReadOnlyList<LayerTraining> Layers,
    bool EmbeddingTrains,
    bool HeadTrains,
    long Tokens,
    int ActivationBytes,
    bool Checkpointing,
    /// <summary>Base linears stored in another dtype than the activations are up-cast per call; autograd keeps the copy when the linear's input needs a gradient (this host's bf16 base on the CPU).</summary>
    int? UpcastWeightBytes,
    /// <summary>
    /// peft train's chunked loss (training:loss_chunk_tokens &gt; 0): the (tokens × vocab) logits never exist whole; the
    /// head's gradient with respect to the hidden states (D fp32 per token) is computed in the forward pass and held
    /// until backward, and a training head's weight gradient (V × D fp32) with it. 0: the full logits path.
    /// </summary>
    int LossChunkTokens = 0);

/// <summary>Bytes held for backward, split so the plan can say where they come from.</summary>
public sealed record ActivationBreakdown(long DecoderBytes, long HeadBytes, long UpcastWeightBytes)
{
    public long Total => DecoderBytes + HeadBytes + UpcastWeightBytes;
}

/// <summary>
/// The tensors autograd keeps for backward in this host's Llama forward (src/Host/Model), counted per token,
/// following PyTorch's rule that an op saves an input only when a gradient needs it. With D = hidden,
/// I = intermediate, H = heads, V = vocabulary, r = an adapter's rank, per decoder layer:
/// <code>
///   input_layernorm      x (D) and 1/rms (1)                      if the residual stream needs a gradient
///                        normed (D)                               if q/k/v save their input or the norm weight trains
///   q, k, v adapters     A x (r) each                             (their input is the normed x above)
///   attention (SDPA)     q, k, v as attended (D each: k/v repeated to H heads under GQA), output (D), logsumexp (H)
///   o_proj               its input (D) if it trains or has an adapter; A x (r)
///   post_attn_layernorm  h (D), 1/rms (1); normed (D) if gate/up save their input or the norm trains
///   SwiGLU               gate pre-activation (I), up (I) (<see cref="Model.SwiGlu"/>); gate*up (I) if down_proj saves its input
///   head                 final x (D), 1/rms, normed (D) if the head trains; logits (V) and log-softmax (V) in fp32
/// </code>
/// A linear saves its input only for its own weight's gradient (trainable weight or adapter), so a frozen
/// LoRA base saves less than full fine-tuning. With activation checkpointing each layer keeps only its input
/// (D) and, at the peak of backward, one layer is recomputed in full. Counted in the activation dtype except
/// logits and log-softmax (fp32).
/// </summary>
public static class ActivationModel
{
    public static ActivationBreakdown Estimate(ActivationInputs a)
    {
        var s = a.Model.Shape;
        long d = s.HiddenSize, inter = s.IntermediateSize, heads = s.NumAttentionHeads, v = s.VocabSize;
        long kvDim = (long)s.NumKeyValueHeads * a.Model.HeadDim;
        long attendedKv = s.NumKeyValueHeads < s.NumAttentionHeads ? (long)s.NumAttentionHeads * a.Model.HeadDim : kvDim;
        long qDim = (long)s.NumAttentionHeads * a.Model.HeadDim;
        var slotsByLayer = a.Model.Slots.Where(x => x.LayerIndex is not null).GroupBy(x => x.LayerIndex!.Value).ToDictionary(g => g.Key, g => g.ToDictionary(x => x.Kind));

        bool grad = a.EmbeddingTrains; // does the residual stream entering the layer need a gradient
        long upcast = 0;
        var perLayer = new List<long>(a.Layers.Count); // elements per token (act dtype)
        for (int l = 0; l < a.Layers.Count; l++)
        {
            var t = a.Layers[l];
            var slots = slotsByLayer[l];
            bool Saves(LinearKind k) => t.WeightsTrain || t.AdapterRanks.ContainsKey(k);
            long Rank(LinearKind k) => t.AdapterRanks.TryGetValue(k, out var r) ? r : 0;
            long dropoutCopy(LinearKind k) => t.AdapterDropout > 0 && t.AdapterRanks.ContainsKey(k) ? slots[k].InFeatures : 0;
            long e = 0;

            if (grad) e += d + 1;                                   // x, 1/rms
            bool normed1Grad = grad || t.WeightsTrain;
            bool qkvSave = Saves(LinearKind.AttentionQuery) || Saves(LinearKind.AttentionKey) || Saves(LinearKind.AttentionValue);
            if (qkvSave || t.WeightsTrain) e += d;                  // normed x
            foreach (var k in new[] { LinearKind.AttentionQuery, LinearKind.AttentionKey, LinearKind.AttentionValue })
            {
                e += Rank(k) + dropoutCopy(k);
                if (normed1Grad) upcast += UpcastBytes(a, slots[k]);
            }
            bool attnGrad = normed1Grad || qkvSave;
            if (attnGrad) e += qDim + 2 * attendedKv + qDim + heads; // q, k, v as attended, output, logsumexp
            if (Saves(LinearKind.AttentionOutput)) e += qDim;       // o_proj input
            e += Rank(LinearKind.AttentionOutput) + dropoutCopy(LinearKind.AttentionOutput);
            if (attnGrad) upcast += UpcastBytes(a, slots[LinearKind.AttentionOutput]);
            bool hGrad = grad || attnGrad || Saves(LinearKind.AttentionOutput);

            if (hGrad) e += d + 1;                                  // h, 1/rms
            bool normed2Grad = hGrad || t.WeightsTrain;
            if (Saves(LinearKind.MlpGate) || Saves(LinearKind.MlpUp) || t.WeightsTrain) e += d;
            e += Rank(LinearKind.MlpGate) + Rank(LinearKind.MlpUp) + dropoutCopy(LinearKind.MlpGate) + dropoutCopy(LinearKind.MlpUp);
            if (normed2Grad) upcast += UpcastBytes(a, slots[LinearKind.MlpGate]) + UpcastBytes(a, slots[LinearKind.MlpUp]);
            bool gateGrad = normed2Grad || Saves(LinearKind.MlpGate), upGrad = normed2Grad || Saves(LinearKind.MlpUp);
            if (gateGrad || upGrad) e += inter;                     // gate pre-activation (SwiGlu recomputes silu from it)
            if (gateGrad) e += inter;                               // up (for the gate's gradient)
            if (Saves(LinearKind.MlpDown)) e += inter;              // gate*up (down_proj input)
            e += Rank(LinearKind.MlpDown) + dropoutCopy(LinearKind.MlpDown);
            if (gateGrad || upGrad) upcast += UpcastBytes(a, slots[LinearKind.MlpDown]);
            grad = hGrad || gateGrad || upGrad || Saves(LinearKind.MlpDown);
            perLayer.Add(e);
        }

        long head = 0;
        if (grad) head += d + 1;
        if (a.HeadTrains) head += d;
        long headBytes = head * a.ActivationBytes + (a.LossChunkTokens > 0 ? d * 4 : 2 * v * 4); // chunked: ∂L/∂h; else logits and log-softmax, fp32
        if (grad || a.HeadTrains)
            upcast += UpcastBytes(a, a.Model.Slots.First(x => x.Kind == LinearKind.OutputHead));

        long decoderPerToken = a.Checkpointing
            ? a.Layers.Count * d + (perLayer.Count == 0 ? 0 : perLayer.Max())
            : perLayer.Sum();
        long headWeightGradient = a.LossChunkTokens > 0 && a.HeadTrains ? v * d * 4 : 0;  // computed in the chunked forward
        return new ActivationBreakdown(decoderPerToken * a.ActivationBytes * a.Tokens, headBytes * a.Tokens + headWeightGradient, a.Checkpointing ? 0 : upcast);
    }

    /// <summary>
    /// The up-cast copy of a base weight stored in another dtype, kept for backward. A 4-bit slot (the QLoRA plugin's
    /// <c>FourBitLinear</c>) keeps nothing: its backward dequantizes again.
    /// </summary>
    static long UpcastBytes(ActivationInputs a, LinearSlot slot) =>
        a.UpcastWeightBytes is { } bytes ? slot.Parameters * bytes : 0;
}
