using Peft.Abstractions.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Optimization;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter, arXiv 1711.05101) exactly as <c>torch.optim.AdamW</c> computes it
/// (single-tensor path, amsgrad off), per parameter p with gradient g at its own step t:
/// <code>
///   p   ← p · (1 − lr·λ)                          decoupled weight decay, applied first
///   m   ← m + (1 − β1)·(g − m)                    (torch: exp_avg.lerp_(g, 1 − β1))
///   v   ← β2·v + (1 − β2)·g²
///   p   ← p − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε)     ε outside the square root
/// </code>
/// The arithmetic is <see cref="AdamUpdate.AdamWStep"/> (shared with the GaLore plugin).
/// State (m, v shaped like p, and the step counter t) is created lazily the first time a parameter has a
/// gradient; a parameter without a gradient, or that does not require grad (a hook froze it), is skipped: no decay,
/// no update, no state, and its counter does not advance.
/// <see cref="ReleaseState"/> forgets a parameter's state (LISA), so it restarts at t = 0 when it trains again.
/// </summary>
public sealed class AdamWOptimizer : IPeftOptimizer
{
    /// <summary>State of one parameter: the moments and the step counter (0-d int64 tensor, so checkpoints alias it).</summary>
    sealed class ParameterState : IDisposable
    {
        public required Tensor ExpAvg;      // m, shape of p
        public required Tensor ExpAvgSq;    // v, shape of p
        public required Tensor StepTensor;  // t, 0-d int64
        public long Step;

        public void Dispose()
        {
            ExpAvg.Dispose();
            ExpAvgSq.Dispose();
            StepTensor.Dispose();
        }
    }

    public const string ExpAvgSuffix = ".exp_avg";
    public const string ExpAvgSqSuffix = ".exp_avg_sq";
    public const string StepSuffix = ".step";

    readonly IReadOnlyList<(string Name, Parameter Parameter)> _parameters;
    readonly Dictionary<string, ParameterState> _state = new(StringComparer.Ordinal);
    readonly double _weightDecay, _beta1, _beta2, _epsilon;
    bool _disposed;

    public AdamWOptimizer(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(settings);
        var duplicate = parameters.GroupBy(p => p.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null) throw new ArgumentException($"parameter '{duplicate.Key}' is listed twice", nameof(parameters));
        if (settings.Beta1 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(settings), $"beta1 {settings.Beta1} is not in [0, 1)");
        if (settings.Beta2 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(settings), $"beta2 {settings.Beta2} is not in [0, 1)");
        if (settings.Epsilon <= 0) throw new ArgumentOutOfRangeException(nameof(settings), $"epsilon {settings.Epsilon} must be positive");
        if (settings.WeightDecay < 0) throw new ArgumentOutOfRangeException(nameof(settings), $"weight decay {settings.WeightDecay} must be >= 0");
        _parameters = parameters.ToList();
        _weightDecay = settings.WeightDecay;
        _beta1 = settings.Beta1;
        _beta2 = settings.Beta2;
        _epsilon = settings.Epsilon;
    }

    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _parameters;

    /// <summary>The step counter of a parameter (0 when it has no state).</summary>
    public long StepOf(string parameterName) => _state.TryGetValue(parameterName, out var s) ? s.Step : 0;

    public void Step(double learningRate)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!double.IsFinite(learningRate) || learningRate < 0) throw new ArgumentOutOfRangeException(nameof(learningRate), $"learning rate {learningRate} must be finite and >= 0");
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in _parameters)
        {
            using var scope = torch.NewDisposeScope();
            var grad = p.grad;
            if (grad is null || !p.requires_grad) continue;   // frozen (e.g. by LISA): no update, no state
            var state = GetOrCreateState(name, p);
            state.Step++;
            state.StepTensor.fill_(state.Step);
            // p ← p·(1 − lr·λ); m, v moments; p ← p − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε)
            AdamUpdate.AdamWStep(p, grad, state.ExpAvg, state.ExpAvgSq, state.Step, learningRate, _weightDecay, _beta1, _beta2, _epsilon);
        }
    }

    public void ZeroGrad()
    {
        // set_to_none, as torch's default: frees the gradient memory.
        foreach (var (_, p) in _parameters)
        {
            using var grad = p.grad;
            if (grad is not null) p.grad = null;
        }
    }

    public void ReleaseState(IEnumerable<string> parameterNames)
    {
        foreach (var name in parameterNames)
            if (_state.Remove(name, out var s)) s.Dispose();
    }

    public long StateBytes => _state.Values.Sum(s =>
        s.ExpAvg.NumberOfElements * s.ExpAvg.ElementSize + s.ExpAvgSq.NumberOfElements * s.ExpAvgSq.ElementSize + s.StepTensor.ElementSize);

    /// <summary>
    /// <c>{name}.exp_avg</c>, <c>{name}.exp_avg_sq</c> and <c>{name}.step</c> (0-d int64) for every parameter
    /// that has state. The tensors alias the live state: do not dispose or modify them.
    /// </summary>
    public IReadOnlyDictionary<string, Tensor> GetState()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, s) in _state)
        {
            result[name + ExpAvgSuffix] = s.ExpAvg;
            result[name + ExpAvgSqSuffix] = s.ExpAvgSq;
            result[name + StepSuffix] = s.StepTensor;
        }
        return result;
    }

    /// <summary>
    /// Replace the whole state with <paramref name="state"/> (values are copied). A key that names no parameter,
    /// a parameter with only part of its three entries, or a wrong shape throws naming the key.
    /// </summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var byName = _parameters.ToDictionary(p => p.Name, p => p.Parameter, StringComparer.Ordinal);
        var loaded = new Dictionary<string, ParameterState>(StringComparer.Ordinal);
        try
        {
            foreach (var key in state.Keys)
            {
                var name = StripSuffix(key) ?? throw new ArgumentException($"optimizer state key '{key}' is not <parameter>{ExpAvgSuffix}, {ExpAvgSqSuffix} or {StepSuffix}");
                if (!byName.ContainsKey(name)) throw new ArgumentException($"optimizer state key '{key}' names no parameter of this optimizer");
            }
            foreach (var (name, p) in _parameters)
            {
                bool hasAvg = state.TryGetValue(name + ExpAvgSuffix, out var avg);
                bool hasSq = state.TryGetValue(name + ExpAvgSqSuffix, out var sq);
                bool hasStep = state.TryGetValue(name + StepSuffix, out var step);
                if (!hasAvg && !hasSq && !hasStep) continue;
                if (!(hasAvg && hasSq && hasStep))
                    throw new ArgumentException($"optimizer state for '{name}' is incomplete (needs {ExpAvgSuffix}, {ExpAvgSqSuffix} and {StepSuffix})");
                CheckShape(name + ExpAvgSuffix, avg!, p.shape);
                CheckShape(name + ExpAvgSqSuffix, sq!, p.shape);
                if (step!.NumberOfElements != 1) throw new ArgumentException($"optimizer state key '{name}{StepSuffix}' must hold one number, has shape [{string.Join(", ", step.shape)}]");
                long t = step.to_type(ScalarType.Int64).item<long>();
                if (t < 1) throw new ArgumentException($"optimizer state key '{name}{StepSuffix}' is {t}; a stored state has step >= 1");
                loaded[name] = new ParameterState
                {
                    ExpAvg = avg!.detach().to(p.dtype, p.device, copy: true).DetachFromDisposeScope(),
                    ExpAvgSq = sq!.detach().to(p.dtype, p.device, copy: true).DetachFromDisposeScope(),
                    StepTensor = torch.tensor(t, dtype: ScalarType.Int64).DetachFromDisposeScope(),
                    Step = t,
                };
            }
        }
        catch
        {
            foreach (var s in loaded.Values) s.Dispose();
            throw;
        }
        foreach (var s in _state.Values) s.Dispose();
        _state.Clear();
        foreach (var (k, v) in loaded) _state[k] = v;
    }

    static string? StripSuffix(string key)
    {
        foreach (var suffix in new[] { ExpAvgSqSuffix, ExpAvgSuffix, StepSuffix })
            if (key.EndsWith(suffix, StringComparison.Ordinal)) return key[..^suffix.Length];
        return null;
    }

    static void CheckShape(string key, Tensor t, long[] expected)
    {
        if (!t.shape.SequenceEqual(expected))
            throw new ArgumentException($"optimizer state key '{key}' has shape [{string.Join(", ", t.shape)}], the parameter has [{string.Join(", ", expected)}]");
    }

    ParameterState GetOrCreateState(string name, Parameter p)
    {
        if (_state.TryGetValue(name, out var s)) return s;
        s = new ParameterState
        {
            ExpAvg = torch.zeros_like(p).DetachFromDisposeScope(),
            ExpAvgSq = torch.zeros_like(p).DetachFromDisposeScope(),
            StepTensor = torch.tensor(0L, dtype: ScalarType.Int64).DetachFromDisposeScope(),
        };
        _state[name] = s;
        return s;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var s in _state.Values) s.Dispose();
        _state.Clear();
    }
}
