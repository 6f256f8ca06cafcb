using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Abstractions.Optimization;

/// <summary>Where Adam's ε sits relative to the bias correction of the second moment.</summary>
public enum AdamEpsilon
{
    /// <summary><c>torch.optim.AdamW</c>: <c>denom = sqrt(v)/sqrt(1 − β2^t) + ε</c>, <c>step_size = lr/(1 − β1^t)</c>.</summary>
    AfterBiasCorrection,

    /// <summary>
    /// HF <c>transformers.AdamW</c>, which the official <c>galore_torch.AdamW</c> copies:
    /// <c>denom = sqrt(v) + ε</c>, <c>step_size = lr·sqrt(1 − β2^t)/(1 − β1^t)</c>.
    /// </summary>
    BeforeBiasCorrection,
}

/// <summary>
/// Adam's arithmetic, in one place for every optimizer of the framework (the host's <c>adamw</c> strategy and
/// the GaLore plugin's projected Adam). For a gradient g (any shape; GaLore passes the projected r×n or m×r
/// gradient) with moments m, v of g's shape at step t (1-based, counted per tensor):
/// <code>
///   m ← m + (1 − β1)·(g − m)                 torch: exp_avg.lerp_(g, 1 − β1)
///   v ← β2·v + (1 − β2)·g²                   exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)
///   p ← p − step_size · m / denom            (denom, step_size: see <see cref="AdamEpsilon"/>)
///   p ← p · (1 − lr·λ)                       decoupled weight decay (Loshchilov &amp; Hutter)
/// </code>
/// The methods are in-place tensor operations and allocate only the temporaries they return.
/// </summary>
public static class AdamUpdate
{
    /// <summary>m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g². Shapes of m, v and g agree.</summary>
    public static void UpdateMoments(Tensor expAvg, Tensor expAvgSq, Tensor grad, double beta1, double beta2)
    {
        using (var weight = torch.tensor(1 - beta1, dtype: expAvg.dtype, device: expAvg.device))
            expAvg.lerp_(grad, weight);
        expAvgSq.mul_(beta2).addcmul_(grad, grad, value: 1 - beta2);
    }

    /// <summary>A NEW tensor: sqrt(v)/sqrt(1 − β2^t) + ε (torch) or sqrt(v) + ε (HF / GaLore).</summary>
    public static Tensor Denominator(Tensor expAvgSq, long step, double beta2, double epsilon, AdamEpsilon placement)
    {
        var denom = expAvgSq.sqrt();
        if (placement == AdamEpsilon.AfterBiasCorrection) denom.div_(Math.Sqrt(1 - Math.Pow(beta2, step)));
        return denom.add_(epsilon);
    }

    /// <summary>lr/(1 − β1^t) (torch) or lr·sqrt(1 − β2^t)/(1 − β1^t) (HF / GaLore).</summary>
    public static double StepSize(double learningRate, long step, double beta1, double beta2, AdamEpsilon placement)
    {
        double biasCorrection1 = 1 - Math.Pow(beta1, step);
        return placement == AdamEpsilon.AfterBiasCorrection
            ? learningRate / biasCorrection1
            : learningRate * Math.Sqrt(1 - Math.Pow(beta2, step)) / biasCorrection1;
    }

    /// <summary>Decoupled weight decay p ← p·(1 − lr·λ) (nothing when λ = 0).</summary>
    public static void DecayWeights(Tensor parameter, double learningRate, double weightDecay)
    {
        if (weightDecay != 0) parameter.mul_(1 - learningRate * weightDecay);
    }

    /// <summary>
    /// One whole <c>torch.optim.AdamW</c> step of a parameter at step t (already incremented):
    /// decay, moments, <c>p.addcdiv_(m, denom, −lr/(1 − β1^t))</c>. Exactly torch's single-tensor path.
    /// </summary>
    public static void AdamWStep(Tensor parameter, Tensor grad, Tensor expAvg, Tensor expAvgSq, long step,
                                 double learningRate, double weightDecay, double beta1, double beta2, double epsilon)
    {
        DecayWeights(parameter, learningRate, weightDecay);
        UpdateMoments(expAvg, expAvgSq, grad, beta1, beta2);
        using var denom = Denominator(expAvgSq, step, beta2, epsilon, AdamEpsilon.AfterBiasCorrection);
        parameter.addcdiv_(expAvg, denom, value: -StepSize(learningRate, step, beta1, beta2, AdamEpsilon.AfterBiasCorrection));
    }
}
