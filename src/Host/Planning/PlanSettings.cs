using Microsoft.Extensions.Configuration;

namespace Peft.Host.Planning;

/// <summary>How trainable tensors are stored while training.</summary>
public enum PlanPrecision
{
    /// <summary>Everything fp32: trainable weights, gradients and AdamW moments (what <c>peft train</c> does on the CPU).</summary>
    Fp32,

    /// <summary>Mixed precision: 16-bit trainable weights and gradients, an fp32 master copy and fp32 moments (the seed's and DeepSpeed's convention).</summary>
    Mixed,
}

/// <summary>
/// The run the planner plans: which components (the same sections <c>peft train</c> reads: <c>quantization</c>,
/// <c>method</c>, <c>optimizer</c>, <c>hooks</c>), how tensors are stored, the batch, and the GPUs.
/// </summary>
public sealed record PlanSettings
{
    /// <summary>method / quantization / optimizer / hooks sections (as in a training configuration).</summary>
    public required IConfiguration Components { get; init; }

    /// <summary>What the user asked for ("qlora+dora"), for display.</summary>
    public string Label { get; init; } = "";

    public PlanPrecision Precision { get; init; } = PlanPrecision.Mixed;

    /// <summary>Bytes per element of the frozen (or not yet quantized) base weights: 2 for bf16/fp16, 4 for fp32.</summary>
    public int BaseDtypeBytes { get; init; } = 2;

    /// <summary>Bytes per element of activations saved for backward (the residual stream's dtype).</summary>
    public int ActivationDtypeBytes { get; init; } = 2;

    /// <summary>Mixed precision only: keep an fp32 master copy of every trainable weight (false: pure 16-bit training, as GaLore's paper).</summary>
    public bool MasterWeights { get; init; } = true;

    /// <summary>Micro-batch per GPU and sequence length; 0 batch means "no activations" (weights and state only).</summary>
    public int BatchSize { get; init; } = 1;
    public int SeqLen { get; init; } = 2048;
    public bool ActivationCheckpointing { get; init; }

    /// <summary>peft train's chunked loss (training:loss_chunk_tokens; 0 = full logits, the default for presets).</summary>
    public int LossChunkTokens { get; init; }

    /// <summary>Data-parallel GPUs and the ZeRO stage (0: replicate everything; 1: shard optimizer state; 2: + gradients; 3: + weights).</summary>
    public int Gpus { get; init; } = 1;
    public int ZeroStage { get; init; }

    /// <summary>Memory of one GPU in bytes (for "fits" and the minimum GPU count); null: not asked.</summary>
    public long? GpuMemoryBytes { get; init; }

    /// <summary>Bytes per element of trainable weights and their gradients.</summary>
    public int TrainDtypeBytes => Precision == PlanPrecision.Fp32 ? 4 : 2;

    /// <summary>Bytes per element the optimizer works in (its moments, the master copy).</summary>
    public int OptimizerDtypeBytes => Precision == PlanPrecision.Fp32 || MasterWeights ? 4 : 2;

    public bool HasMasterCopy => Precision == PlanPrecision.Mixed && MasterWeights;
}
