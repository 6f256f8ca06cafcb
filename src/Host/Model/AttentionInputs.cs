using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// What every layer's attention shares in one forward pass: the rotary tables (T, head_dim) for the positions
/// being computed, the first of those positions, and the KV cache (null when the whole sequence is given).
/// </summary>
public sealed record AttentionInputs(Tensor Cos, Tensor Sin, long StartPosition, KvCache? Cache);
