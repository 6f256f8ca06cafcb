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
        _rotary = new RotaryEmbedding(config.HeadDim, config.RopeTheta);
        RegisterComponents();
    }

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
        foreach (var layer in layers) h = layer.call(h, inputs);
        cache?.Advance(t);
        return norm.call(h).MoveToOuterDisposeScope();
    }
}
