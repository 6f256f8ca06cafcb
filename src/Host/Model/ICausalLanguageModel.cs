using Peft.Abstractions.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A decoder-only language model the trainer, <c>eval</c> and <c>generate</c> drive. The Llama implementation
/// is <see cref="LlamaForCausalLM"/>; methods see it through <see cref="IPeftModel"/>.
/// </summary>
public interface ICausalLanguageModel : IPeftModel
{
    /// <summary>input_ids (batch, seq) int64 -> logits (batch, seq, vocab) float32. No KV cache.</summary>
    Tensor Logits(Tensor inputIds);

    /// <summary>The model as a module (for train/eval mode, parameters, state).</summary>
    nn.Module Module { get; }

    /// <summary>
    /// input_ids (batch, seq) -> logits (batch, seq, vocab) fp32, continuing the sequence held in
    /// <paramref name="cache"/> (positions cache.Length ..), whose keys/values are extended; null: no cache.
    /// </summary>
    Tensor Forward(Tensor inputIds, KvCache? cache);

    /// <summary>An empty KV cache for generation (capacity: max_position_embeddings unless given).</summary>
    KvCache CreateKvCache(int batchSize = 1, int? capacity = null);
}
