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
}
