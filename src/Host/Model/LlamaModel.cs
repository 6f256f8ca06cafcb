using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The decoder body (HF's LlamaModel, the <c>model.</c> prefix): token embedding, the decoder layers and the final
/// RMSNorm. ids (B, T) int64 -> hidden states (B, T, D) fp32.
/// </summary>
public sealed class LlamaModel : nn.Module<Tensor, KvCache?, Tensor>
{
#pragma warning disable IDE1006 // HF module names
    internal readonly TokenEmbedding embed_tokens;
    internal readonly ModuleList<LlamaDecoderLayer> layers;
    internal readonly RmsNorm norm;
#pragma warning restore IDE1006
    readonly RotaryEmbedding _rotary;

    public LlamaModel(LlamaConfig config, ScalarType storageDtype, Device device) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(config.VocabSize, config.HiddenSize, storageDtype, device);
        layers = new ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(i => new LlamaDecoderLayer(config, i, storageDtype, device)).ToArray());
        norm = new RmsNorm(config.HiddenSize, config.RmsNormEps, storageDtype, device);
        _rotary = new RotaryEmbedding(config.HeadDim, config.RopeTheta, config.RopeScaling);
        RegisterComponents();
    }

    /// <summary>
    /// Recompute each decoder layer's activations in the backward pass (<see cref="ActivationCheckpoint"/>) instead
    /// of keeping them: applies in training mode, with grad enabled and without a KV cache.
    /// </summary>
    public bool ActivationCheckpointing { get; set; }

    /// <summary>
    /// ids (B, T) -> normalized hidden states (B, T, D). With a cache, the ids are positions cache.Length ..
    /// cache.Length+T-1 and their keys/values are appended; without one, positions start at 0.
    /// </summary>
    public override Tensor forward(Tensor ids, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long start = cache?.Length ?? 0, t = ids.shape[1];
        var (cos, sin) = _rotary.Tables(start, t, ids.device);
        var inputs = new AttentionInputs(cos, sin, start, cache);
        var h = embed_tokens.call(ids);
        bool checkpointing = ActivationCheckpointing && training && cache is null && torch.is_grad_enabled();
        foreach (var layer in layers)
        {
            h = checkpointing
                // The rotary tables are made in this pass and freed with its scope: they travel as the block's
                // constants (saved in the graph) so that the recomputation in backward still has them.
                ? ActivationCheckpoint.Run((x, c) => layer.call(x, new AttentionInputs(c[0], c[1], start, null)), h, [cos, sin], layer.parameters())
                : layer.call(h, inputs);
        }
        cache?.Advance(t);
        return norm.call(h).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A numeric health probe (no grad): runs <paramref name="ids"/> (1, T) through the layers and returns the first
    /// decoder layer whose output h is not finite, or whose RMSNorm statistic mean(h²) overflows float32 (the next
    /// norm would turn the stream into zeros or NaN: a saturated model), with the largest |h| there; null if none.
    /// </summary>
    internal (int Layer, double MaxAbs)? FirstSaturatedLayer(Tensor ids)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var (cos, sin) = _rotary.Tables(0, ids.shape[1], ids.device);
        var inputs = new AttentionInputs(cos, sin, 0, null);
        var h = embed_tokens.call(ids);
        for (int i = 0; i < layers.Count; i++)
        {
            h = layers[i].call(h, inputs);
            var h32 = h.to(ScalarType.Float32);
            if (!torch.isfinite(h32.pow(2).mean(new long[] { -1 })).all().item<bool>())
                return (i, h32.abs().max().item<float>());
        }
        return null;
    }
}
