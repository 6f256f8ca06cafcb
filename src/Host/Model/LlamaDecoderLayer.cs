using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// One pre-norm decoder block: h = x + attn(rms(x)); y = h + mlp(rms(h)). x, y (B, T, D).
/// Children (HF names): self_attn, mlp, input_layernorm, post_attention_layernorm.
/// </summary>
public sealed class LlamaDecoderLayer : nn.Module<Tensor, AttentionInputs, Tensor>
{
#pragma warning disable IDE1006 // HF module names
    internal readonly LlamaAttention self_attn;
    internal readonly LlamaMlp mlp;
    internal readonly RmsNorm input_layernorm;
    internal readonly RmsNorm post_attention_layernorm;
#pragma warning restore IDE1006

    public LlamaDecoderLayer(LlamaConfig config, int layerIndex, ScalarType storageDtype, Device device) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(config, layerIndex, storageDtype, device);
        mlp = new LlamaMlp(config, storageDtype, device);
        input_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps, storageDtype, device);
        post_attention_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps, storageDtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, AttentionInputs inputs)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + self_attn.call(input_layernorm.call(x), inputs);
        return (h + mlp.call(post_attention_layernorm.call(h))).MoveToOuterDisposeScope();
    }
}
