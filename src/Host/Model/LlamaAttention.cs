using Peft.Abstractions.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// Causal self-attention with grouped-query heads (Ainslie et al. 2023) and rotary positions, as HF's
/// LlamaAttention. x (B, T, D) ->
///   q = rope(x Wq^T) (B, H, T, d), k = rope(x Wk^T) (B, Hkv, T, d), v = x Wv^T (B, Hkv, T, d);
///   each group of H/Hkv query heads shares one k/v head;
///   a = softmax(q k^T / sqrt(d) + causal mask) v (B, H, T, d);  y = concat_heads(a) Wo^T (B, T, D).
/// The four projections are replaceable linear slots named as in HF: q_proj, k_proj, v_proj, o_proj.
/// </summary>
public sealed class LlamaAttention : nn.Module<Tensor, AttentionInputs, Tensor>, ILinearSlotOwner
{
    static readonly string[] SlotNames = ["q_proj", "k_proj", "v_proj", "o_proj"];
    readonly Dictionary<string, ILinearLayer> _slots = new(StringComparer.Ordinal);
    readonly int _layerIndex, _heads, _kvHeads, _headDim;
    readonly int? _window;

    public LlamaAttention(LlamaConfig config, int layerIndex, ScalarType storageDtype, Device device) : base(nameof(LlamaAttention))
    {
        _layerIndex = layerIndex;
        _heads = config.NumAttentionHeads;
        _kvHeads = config.NumKeyValueHeads;
        _headDim = config.HeadDim;
        _window = config.SlidingWindow;
        // q_proj (D -> H*d) and o_proj (H*d -> D): H*d differs from D when config.json gives head_dim (Llama 3.2 3B...).
        long d = config.HiddenSize, q = config.QueryDim, kv = config.KeyValueDim;
        bool qkvBias = config.AttentionBias || config.QkvBias, outBias = config.AttentionBias; // Qwen2: q/k/v only
        _slots["q_proj"] = new BaseLinear(d, q, qkvBias, storageDtype, device);
        _slots["k_proj"] = new BaseLinear(d, kv, qkvBias, storageDtype, device);
        _slots["v_proj"] = new BaseLinear(d, kv, qkvBias, storageDtype, device);
        _slots["o_proj"] = new BaseLinear(q, d, outBias, storageDtype, device);
        RegisterSlots();
        RegisterComponents();
    }

    public ILinearLayer GetSlot(string slot) =>
        _slots.TryGetValue(slot, out var layer) ? layer : throw new KeyNotFoundException($"attention has no linear slot '{slot}'");

    public void SetSlot(string slot, ILinearLayer layer)
    {
        LinearSlotChecks.CheckReplacement(slot, GetSlot(slot), layer);
        _slots[slot] = layer;
        RegisterSlots();
    }

    /// <summary>(Re-)register the slots as children in HF order, so parameter names and order follow the slots.</summary>
    void RegisterSlots()
    {
        ClearModules();
        foreach (var name in SlotNames) register_module(name, _slots[name].Module);
    }

    public override Tensor forward(Tensor x, AttentionInputs inputs)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        // (B, T, heads*d) -> (B, heads, T, d)
        var q = Rotated(_slots["q_proj"].Module.call(x), _heads, inputs);
        var k = Rotated(_slots["k_proj"].Module.call(x), _kvHeads, inputs);
        var v = _slots["v_proj"].Module.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);

        if (inputs.Cache is { } cache)
            (k, v) = cache.Append(_layerIndex, k.to(ScalarType.Float32), v.to(ScalarType.Float32)); // (B, Hkv, S, d), S = start + T

        // Grouped-query attention: query head h reads k/v head h / (H / Hkv) (HF repeat_kv).
        int groups = _heads / _kvHeads;
        if (groups > 1)
        {
            k = k.repeat_interleave(groups, dim: 1); // (B, H, S, d)
            v = v.repeat_interleave(groups, dim: 1);
        }

        long s = k.shape[2];
        Tensor attended;
        if (_window is int w && s > w)
        {
            // Sliding window (Mistral): query at position p sees keys p-w+1 .. p.
            long start = s - t;
            var queryPos = torch.arange(start, s, device: x.device).unsqueeze(1);  // (T, 1)
            var keyPos = torch.arange(0, s, device: x.device).unsqueeze(0);        // (1, S)
            var allowed = keyPos.le(queryPos).logical_and(keyPos.gt(queryPos - w)); // (T, S) bool
            var mask = torch.zeros(t, s, q.dtype, x.device).masked_fill_(allowed.logical_not(), double.NegativeInfinity);
            attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
        }
        else if (s == t)
        {
            // Whole sequence (or a first chunk): plain causal mask.
            attended = nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true);
        }
        else if (t == 1)
        {
            // One new token sees every cached position.
            attended = nn.functional.scaled_dot_product_attention(q, k, v);
        }
        else
        {
            // A chunk after cached positions: query i (position start+i) sees keys j <= start+i.
            long start = s - t;
            var queryPos = torch.arange(start, s, device: x.device).unsqueeze(1);  // (T, 1)
            var keyPos = torch.arange(0, s, device: x.device).unsqueeze(0);        // (1, S)
            var allowed = keyPos.le(queryPos);                                     // (T, S) bool
            var mask = torch.zeros(t, s, q.dtype, x.device).masked_fill_(allowed.logical_not(), double.NegativeInfinity);
            attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
        }
        var merged = attended.transpose(1, 2).reshape(b, t, _heads * _headDim); // (B, T, D)
        return _slots["o_proj"].Module.call(merged).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A projection (B, T, heads*d) as rotated heads (B, heads, T, d). The unrotated projection is freed here, not at
    /// the end of the block: no backward formula reads it, and its memory is then free for the next tensors of this layer.
    /// </summary>
    Tensor Rotated(Tensor projection, int heads, AttentionInputs inputs)
    {
        using (projection)
        using (var split = projection.view(projection.shape[0], projection.shape[1], heads, _headDim).transpose(1, 2))
            return RotaryEmbedding.Apply(split, inputs.Cos, inputs.Sin);
    }
}
