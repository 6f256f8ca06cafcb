using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// Keys and values of every decoder layer for the positions computed so far, so that generation feeds only the
/// new token. Preallocated per layer as (B, kv_heads, capacity, head_dim) fp32; <see cref="Length"/> positions are
/// filled. The model appends to it in <see cref="LlamaForCausalLM.Forward(Tensor, KvCache?)"/>.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor[] _keys, _values;

    public KvCache(int layers, long batch, long kvHeads, long capacity, long headDim, Device device)
    {
        Capacity = capacity;
        _keys = new Tensor[layers];
        _values = new Tensor[layers];
        for (int i = 0; i < layers; i++)
        {
            _keys[i] = torch.zeros(batch, kvHeads, capacity, headDim, ScalarType.Float32, device);
            _values[i] = torch.zeros(batch, kvHeads, capacity, headDim, ScalarType.Float32, device);
        }
    }

    public long Capacity { get; }

    /// <summary>Positions already cached (the next token's position).</summary>
    public long Length { get; private set; }

    /// <summary>
    /// Store k, v (B, kv_heads, T, d) for positions Length .. Length+T-1 of <paramref name="layer"/> and return
    /// views of all cached keys and values (B, kv_heads, Length+T, d). <see cref="Advance"/> moves Length on
    /// after the last layer.
    /// </summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (Length + t > Capacity)
            throw new InvalidOperationException($"KV cache holds {Capacity} positions; cannot add {t} after {Length}");
        using (torch.no_grad())
        {
            _keys[layer].narrow(2, Length, t).copy_(k);
            _values[layer].narrow(2, Length, t).copy_(v);
        }
        return (_keys[layer].narrow(2, 0, Length + t), _values[layer].narrow(2, 0, Length + t));
    }

    internal void Advance(long t) => Length += t;

    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}
