using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Optimization;

namespace Peft.Host.Training;

/// <summary>
/// The <c>training</c> section. Defaults follow HF <c>TrainingArguments</c> unless noted:
/// <code>
/// "training": { "seed": 42, "batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": -1, "epochs": 3,
///               "learning_rate": 5e-5, "weight_decay": 0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
///               "lr_scheduler": "linear", "warmup_steps": 0, "max_grad_norm": 1.0, "eval_every": 0, "eval_batches": 0,
///               "checkpoint_every": 500, "keep_last_checkpoints": 0, "base_dtype": "float32",
///               "activation_checkpointing": false, "log_every": 10,
///               "loss_chunk_tokens": 256 }
/// </code>
/// </summary>
public sealed class TrainingOptions : IValidatableOptions
{
    public static readonly IReadOnlyList<string> Schedulers = ["constant", "linear", "cosine"];
    public static readonly IReadOnlyList<string> BaseDtypes = ["float32", "bfloat16"];

    [ConfigurationKeyName("seed")] public int Seed { get; set; } = 42;

    /// <summary>Examples per micro-batch (HF per_device_train_batch_size).</summary>
    [ConfigurationKeyName("batch_size")] public int BatchSize { get; set; } = 8;

    /// <summary>Micro-batches per optimizer step; the loss is averaged over all counted tokens of the step.</summary>
    [ConfigurationKeyName("gradient_accumulation_steps")] public int GradientAccumulationSteps { get; set; } = 1;

    /// <summary>Optimizer steps to run; -1 = derive from <see cref="Epochs"/> (0 is refused: it would silently mean epochs). When positive it wins over epochs (as HF).</summary>
    [ConfigurationKeyName("max_steps")] public int MaxSteps { get; set; } = -1;

    /// <summary>Passes over the training examples when max_steps is not set (may be fractional).</summary>
    [ConfigurationKeyName("epochs")] public double Epochs { get; set; } = 3;

    [ConfigurationKeyName("learning_rate")] public double LearningRate { get; set; } = 5e-5;
    [ConfigurationKeyName("weight_decay")] public double WeightDecay { get; set; }
    [ConfigurationKeyName("adam_beta1")] public double AdamBeta1 { get; set; } = 0.9;
    [ConfigurationKeyName("adam_beta2")] public double AdamBeta2 { get; set; } = 0.999;
    [ConfigurationKeyName("adam_epsilon")] public double AdamEpsilon { get; set; } = 1e-8;

    /// <summary>constant | linear | cosine, each with linear warm-up over <see cref="WarmupSteps"/>.</summary>
    [ConfigurationKeyName("lr_scheduler")] public string LrScheduler { get; set; } = "linear";
    [ConfigurationKeyName("warmup_steps")] public int WarmupSteps { get; set; }

    /// <summary>Clip the global gradient norm to this value; 0 = no clipping.</summary>
    [ConfigurationKeyName("max_grad_norm")] public double MaxGradNorm { get; set; } = 1.0;

    /// <summary>Evaluate on the held-out examples every N optimizer steps; 0 = only at the end (when there are held-out examples).</summary>
    [ConfigurationKeyName("eval_every")] public int EvalEvery { get; set; }

    /// <summary>Micro-batches per evaluation; 0 = all held-out examples.</summary>
    [ConfigurationKeyName("eval_batches")] public int EvalBatches { get; set; }

    /// <summary>Write a resumable checkpoint every N optimizer steps; 0 = never.</summary>
    [ConfigurationKeyName("checkpoint_every")] public int CheckpointEvery { get; set; } = 500;

    /// <summary>Keep only the newest K checkpoints; 0 = keep all (HF save_total_limit = None).</summary>
    [ConfigurationKeyName("keep_last_checkpoints")] public int KeepLastCheckpoints { get; set; }

    /// <summary>Storage of the frozen (non-trainable) base weights: float32 or bfloat16. Compute stays float32.</summary>
    [ConfigurationKeyName("base_dtype")] public string BaseDtype { get; set; } = "float32";

    /// <summary>Recompute each decoder layer's activations in the backward pass instead of storing them.</summary>
    [ConfigurationKeyName("activation_checkpointing")] public bool ActivationCheckpointing { get; set; }

    /// <summary>Write a metrics line (and a plain progress line) every N optimizer steps.</summary>
    [ConfigurationKeyName("log_every")] public int LogEvery { get; set; } = 10;

    /// <summary>
    /// The LM head and the loss run over chunks of this many tokens, so the (tokens × vocab) logits and their
    /// gradient never exist whole (same loss and gradients); 0 = the plain path (full logits).
    /// </summary>
    [ConfigurationKeyName("loss_chunk_tokens")] public int LossChunkTokens { get; set; } = CausalLmLoss.DefaultChunkTokens;

    /// <summary>
    /// LibTorch intra-op CPU threads; 0 = one per physical core this process may use and no other process keeps
    /// busy (<see cref="LibTorchThreads.Default"/>; hyper-threads do not count).
    /// </summary>
    [ConfigurationKeyName("num_threads")] public int NumThreads { get; set; }

    /// <summary>Continue from a checkpoint folder, or "latest" for the newest one under output/checkpoints. Unset = fresh run.</summary>
    [ConfigurationKeyName("resume")] public string? Resume { get; set; }

    /// <summary>fp32 | bf16-mixed | fp16-mixed: fp32 master weights and optimizer state, a low-precision model copy (see <see cref="MixedPrecision"/>).</summary>
    [ConfigurationKeyName("precision")] public string Precision { get; set; } = MixedPrecision.Fp32;

    /// <summary>fp16-mixed: the initial loss scale (torch GradScaler's 2^16).</summary>
    [ConfigurationKeyName("loss_scale")] public double LossScale { get; set; } = 65536;

    /// <summary>fp16-mixed: double the loss scale after this many steps in a row without overflow (GradScaler's 2000).</summary>
    [ConfigurationKeyName("loss_scale_growth_interval")] public int LossScaleGrowthInterval { get; set; } = 2000;

    /// <summary>The optimizer hyper-parameters every <see cref="IOptimizerStrategy"/> receives.</summary>
    public OptimizerSettings ToOptimizerSettings() => new(LearningRate, WeightDecay, AdamBeta1, AdamBeta2, AdamEpsilon);

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (BatchSize < 1) yield return ("batch_size", BatchSize, "must be at least 1");
        if (GradientAccumulationSteps < 1) yield return ("gradient_accumulation_steps", GradientAccumulationSteps, "must be at least 1");
        if (MaxSteps < -1 || MaxSteps == 0) yield return ("max_steps", MaxSteps, "must be a positive number of steps, or -1 (or left out) to train for training:epochs");
        if (MaxSteps <= 0 && !(Epochs > 0 && double.IsFinite(Epochs))) yield return ("epochs", Epochs, "must be positive when max_steps is not set");
        if (!(LearningRate >= 0 && double.IsFinite(LearningRate))) yield return ("learning_rate", LearningRate, "must be a finite number >= 0");
        if (!(WeightDecay >= 0 && double.IsFinite(WeightDecay))) yield return ("weight_decay", WeightDecay, "must be a finite number >= 0");
        if (!(AdamBeta1 >= 0 && AdamBeta1 < 1)) yield return ("adam_beta1", AdamBeta1, "must be in [0, 1)");
        if (!(AdamBeta2 >= 0 && AdamBeta2 < 1)) yield return ("adam_beta2", AdamBeta2, "must be in [0, 1)");
        if (!(AdamEpsilon > 0 && double.IsFinite(AdamEpsilon))) yield return ("adam_epsilon", AdamEpsilon, "must be a positive number");
        if (!Schedulers.Contains(LrScheduler)) yield return ("lr_scheduler", LrScheduler, $"must be one of {string.Join(", ", Schedulers)}");
        if (WarmupSteps < 0) yield return ("warmup_steps", WarmupSteps, "must be >= 0");
        if (!(MaxGradNorm >= 0 && double.IsFinite(MaxGradNorm))) yield return ("max_grad_norm", MaxGradNorm, "must be >= 0 (0 turns clipping off)");
        if (EvalEvery < 0) yield return ("eval_every", EvalEvery, "must be >= 0 (0 = evaluate only at the end)");
        if (EvalBatches < 0) yield return ("eval_batches", EvalBatches, "must be >= 0 (0 = all held-out examples)");
        if (CheckpointEvery < 0) yield return ("checkpoint_every", CheckpointEvery, "must be >= 0 (0 = no checkpoints)");
        if (KeepLastCheckpoints < 0) yield return ("keep_last_checkpoints", KeepLastCheckpoints, "must be >= 0 (0 = keep all)");
        if (!BaseDtypes.Contains(BaseDtype)) yield return ("base_dtype", BaseDtype, $"must be one of {string.Join(", ", BaseDtypes)}");
        if (LossChunkTokens < 0) yield return ("loss_chunk_tokens", LossChunkTokens, "must be a number of tokens per chunk, or 0 for the full logits");
        if (LogEvery < 1) yield return ("log_every", LogEvery, "must be at least 1");
        if (NumThreads < 0 || NumThreads > 1024) yield return ("num_threads", NumThreads, "must be 0 (one per physical core) or a number of threads");
        if (!MixedPrecision.Modes.Contains(Precision)) yield return ("precision", Precision, $"must be one of {string.Join(", ", MixedPrecision.Modes)}");
        if (!(LossScale >= 1 && double.IsFinite(LossScale))) yield return ("loss_scale", LossScale, "must be a finite number >= 1");
        if (LossScaleGrowthInterval < 1) yield return ("loss_scale_growth_interval", LossScaleGrowthInterval, "must be at least 1");
        if (Resume is not null && string.IsNullOrWhiteSpace(Resume)) yield return ("resume", Resume, "must be a checkpoint folder or \"latest\"");
    }
}

/// <summary>The <c>output</c> section: <c>"output": { "dir": "runs/lora-alpaca" }</c>.</summary>
public sealed class OutputOptions : IValidatableOptions
{
    /// <summary>Folder that receives the result, metrics.jsonl, loss_curve.png, training_summary.json and checkpoints/. Required.</summary>
    [ConfigurationKeyName("dir")] public string? Dir { get; set; }

    /// <summary>
    /// With a PEFT method: write one HF model folder <c>model/</c> with the adapter merged into the weights instead of
    /// <c>adapter/</c>. When a hook trained base weights (LISA + LoRA) and this is false, <c>model/</c> holds the trained
    /// base and <c>adapter/</c> the adapter on top of it.
    /// </summary>
    [ConfigurationKeyName("merge_adapter")] public bool MergeAdapter { get; set; }

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (string.IsNullOrWhiteSpace(Dir)) yield return ("dir", Dir, "is required: the folder that receives the trained weights, metrics and checkpoints");
    }
}
