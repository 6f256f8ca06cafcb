using Peft.Abstractions.Model;

namespace Peft.Host.Model;

/// <summary>
/// The linear slots of a Llama-family decoder, in model order, with HF names: per layer q, k, v, o (attention)
/// then gate, up, down (MLP), and <c>lm_head</c> last. The one place that knows this layout: the model builds its
/// slots from it and the planner lists a config's slots with it.
/// </summary>
public static class LlamaLayout
{
    public const string HeadName = "lm_head";

    public static IReadOnlyList<LinearSlot> Slots(ModelShape s, int? headDim = null)
    {
        long h = s.HiddenSize, q = (long)s.NumAttentionHeads * (headDim ?? s.HeadDim), kv = (long)s.NumKeyValueHeads * (headDim ?? s.HeadDim), i = s.IntermediateSize;
        var list = new List<LinearSlot>(s.NumHiddenLayers * 7 + 1);
        for (int l = 0; l < s.NumHiddenLayers; l++)
        {
            string attn = $"model.layers.{l}.self_attn.", mlp = $"model.layers.{l}.mlp.";
            list.Add(new(attn + "q_proj", "q_proj", l, LinearKind.AttentionQuery, h, q));
            list.Add(new(attn + "k_proj", "k_proj", l, LinearKind.AttentionKey, h, kv));
            list.Add(new(attn + "v_proj", "v_proj", l, LinearKind.AttentionValue, h, kv));
            list.Add(new(attn + "o_proj", "o_proj", l, LinearKind.AttentionOutput, q, h));
            list.Add(new(mlp + "gate_proj", "gate_proj", l, LinearKind.MlpGate, h, i));
            list.Add(new(mlp + "up_proj", "up_proj", l, LinearKind.MlpUp, h, i));
            list.Add(new(mlp + "down_proj", "down_proj", l, LinearKind.MlpDown, i, h));
        }
        list.Add(new(HeadName, HeadName, null, LinearKind.OutputHead, h, s.VocabSize));
        return list;
    }
}
