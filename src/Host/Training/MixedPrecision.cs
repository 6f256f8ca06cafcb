using System.Globalization;
using Peft.Abstractions;
using Peft.Abstractions.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Training;

/// <summary>
/// <c>training:precision</c> = fp32 | bf16-mixed | fp16-mixed: mixed-precision training as GPU frameworks run it
/// (Micikevicius et al. 2018, arXiv 1710.03740; torch.amp's GradScaler), the trainer's one seam for it. Per step:
/// <code>
///   master ← θ                                 fp32 master weights (the optimizer's parameters between steps)
///   θ      ← fp32(lowp(master))                the model copy: the bf16 / fp16 cast of the master
///   forward, (loss · S).backward()             S = loss scale (fp16 only; 1 for bf16)
///   g      ← fp32(lowp(g))                     gradients as the low-precision model copy holds them
///   θ      ← master                            the optimizer steps the fp32 master with fp32 state
///   fp16:  any g not finite → skip the step (no update), S ← S · backoff (½), streak ← 0
///          else g ← g / S; streak += 1; streak = growth_interval → S ← S · 2, streak ← 0
/// </code>
/// On this CPU backend the model copy lives in fp32 tensors holding exactly the low-precision values (LibTorch's
/// CPU kernels for bf16/fp16 matmuls are slow or missing), so the numerics are those of mixed precision (the
/// rounding of weights and gradients, fp16's overflow and loss scaling) while activations stay fp32 and the memory
/// a GPU saves on the half-size copy is not saved here: the master copy is one extra fp32 copy of the trainable
/// parameters. Between steps θ holds the master, so checkpoints, evaluation and the written result are fp32.
/// </summary>
public sealed class MixedPrecision : IDisposable
{
    public const string Fp32 = "fp32";
    public const string Bf16Mixed = "bf16-mixed";
    public const string Fp16Mixed = "fp16-mixed";
    public static readonly IReadOnlyList<string> Modes = [Fp32, Bf16Mixed, Fp16Mixed];

    /// <summary>fp16's largest finite value; a scaled gradient beyond it overflows to inf in the model copy.</summary>
    public const double Fp16Max = 65504;

    readonly List<(Parameter Parameter, Tensor Master)> _slots = [];
    int _goodSteps;
    bool _disposed;

    public string Mode { get; }

    /// <summary>The model copy's dtype (bfloat16 / float16), or null in fp32.</summary>
    public ScalarType? LowPrecision { get; }

    /// <summary>The loss scale S (1 unless fp16-mixed).</summary>
    public double LossScale { get; private set; }
    public int GrowthInterval { get; }
    public int SkippedSteps { get; private set; }
    public bool Active => LowPrecision is not null;

    /// <summary>The fp32 master of each floating-point trainable parameter (empty in fp32).</summary>
    public IReadOnlyList<(Parameter Parameter, Tensor Master)> Masters => _slots;

    public MixedPrecision(string mode, IReadOnlyList<(string Name, Parameter Parameter)> trainable, double initialLossScale = 65536, int growthInterval = 2000)
    {
        if (!Modes.Contains(mode)) throw new PeftConfigurationException("training:precision", mode, $"must be one of {string.Join(", ", Modes)}");
        Mode = mode;
        LowPrecision = mode switch { Bf16Mixed => ScalarType.BFloat16, Fp16Mixed => ScalarType.Float16, _ => null };
        LossScale = mode == Fp16Mixed ? initialLossScale : 1;
        GrowthInterval = growthInterval;
        if (!Active) return;
        var seen = new HashSet<IntPtr>();
        foreach (var (name, p) in trainable)
        {
            if (!seen.Add(p.Handle) || !p.is_floating_point()) continue; // tied weights once; integer (quantized) weights are not cast
            if (p.dtype != ScalarType.Float32)
                throw new PeftConfigurationException("training:precision", mode, $"needs fp32 master weights, but trainable parameter '{name}' is {p.dtype}");
            _slots.Add((p, torch.empty_like(p, requires_grad: false)));
        }
    }

    /// <summary>The seam's factory: the trainer's options and trainable list; refuses an optimizer that steps inside backward.</summary>
    public static MixedPrecision For(TrainingOptions options, IReadOnlyList<(string Name, Parameter Parameter)> trainable, IPeftOptimizer optimizer)
    {
        if (options.Precision != Fp32 && optimizer is IBackwardStepOptimizer)
            throw new PeftConfigurationException("training:precision", options.Precision,
                "cannot be used with a layer-wise optimizer (it updates each weight inside the backward pass, before the gradients could be unscaled and checked); use fp32, or turn the optimizer's layerwise option off");
        return new MixedPrecision(options.Precision, trainable, options.LossScale, options.LossScaleGrowthInterval);
    }

    /// <summary>Before the step's forward passes: keep the master, put its low-precision cast in the model.</summary>
    public void BeginStep()
    {
        if (!Active) return;
        using var noGrad = torch.no_grad();
        foreach (var (p, master) in _slots)
        {
            using var scope = torch.NewDisposeScope();
            master.copy_(p);
            p.copy_(p.to(LowPrecision!.Value).to(ScalarType.Float32));
        }
    }

    /// <summary>
    /// After the step's backward passes: gradients rounded to the model copy's precision, the master restored into
    /// the parameters, and (fp16) the overflow check and unscaling. False when the step must be skipped (gradients are
    /// then left for the caller to zero).
    /// </summary>
    public bool EndBackward()
    {
        if (!Active) return true;
        using var noGrad = torch.no_grad();
        bool finite = true;
        foreach (var (p, master) in _slots)
        {
            using var scope = torch.NewDisposeScope();
            using var g = p.grad;
            if (g is not null)
            {
                g.copy_(g.to(LowPrecision!.Value).to(ScalarType.Float32));
                if (finite && !g.isfinite().all().item<bool>()) finite = false;
            }
            p.copy_(master);
        }
        if (LowPrecision != ScalarType.Float16) return true;
        if (!finite)
        {
            SkippedSteps++;
            LossScale *= 0.5;
            _goodSteps = 0;
            return false;
        }
        foreach (var (p, _) in _slots)
        {
            using var g = p.grad; // the wrapper holds a reference to the gradient: dispose it, or the old gradient outlives ZeroGrad
            g?.div_(LossScale);
        }
        if (++_goodSteps >= GrowthInterval)
        {
            LossScale *= 2;
            _goodSteps = 0;
        }
        return true;
    }

    public string Describe() => LowPrecision == ScalarType.Float16
        ? string.Create(CultureInfo.InvariantCulture, $"precision {Mode}: {SkippedSteps} steps skipped on overflow, loss scale now {LossScale}")
        : $"precision {Mode}";

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var (_, master) in _slots) master.Dispose();
        _slots.Clear();
    }
}
