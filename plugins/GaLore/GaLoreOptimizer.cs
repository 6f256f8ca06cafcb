using Peft.Abstractions;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.GaLore;

/// <summary>
/// GaLore (Zhao et al. 2024, arXiv 2403.03507) as the official <c>galore_torch.AdamW</c> steps a targeted (m, n)
/// weight W with gradient G at its step t (counted per weight, 1-based after the increment):
/// <code>
///   R   = projector.Project(G, t − 1)         (m, r) | (r, n) | (r, r); SVD refresh when (t − 1) % gap == 0
///   m   ← lerp(m, R, 1 − β1);  v ← β2·v + (1 − β2)·R²           moments in R's shape
///   N   = m / (sqrt(v) + ε)
///   W   ← W − lr·sqrt(1 − β2^t)/(1 − β1^t) · α·projector.ProjectBack(N)      (m, n)
///   W   ← W·(1 − lr·λ)                                           decoupled weight decay, after the update
/// </code>
/// (the official code uses HF's ε placement, <see cref="AdamEpsilon.BeforeBiasCorrection"/>; the moments are not
/// reset when the subspace changes). Every other trainable parameter gets plain AdamW exactly as the host's
/// <c>adamw</c> strategy (<see cref="AdamUpdate.AdamWStep"/>). Both use <see cref="AdamUpdate"/>'s arithmetic.
/// Checkpoint state per parameter: <c>.exp_avg</c>, <c>.exp_avg_sq</c>, <c>.step</c> (0-d int64), and for targeted
/// weights <c>.projector_left</c> (U_r, m×r) and/or <c>.projector_right</c> (Vh_r, r×n).
/// </summary>
public sealed class GaLoreOptimizer : IBackwardStepOptimizer
{
    public const string ExpAvgSuffix = ".exp_avg";
    public const string ExpAvgSqSuffix = ".exp_avg_sq";
    public const string StepSuffix = ".step";
    public const string ProjectorLeftSuffix = ".projector_left";
    public const string ProjectorRightSuffix = ".projector_right";
    /// <summary>Prefix of a quantized weight's own tensors in the state: <c>{name}.quantized.weight</c> (int8), <c>.weight_scale</c>.</summary>
    public const string QuantizedInfix = ".quantized.";
    static readonly string[] Suffixes = [ExpAvgSqSuffix, ExpAvgSuffix, StepSuffix, ProjectorLeftSuffix, ProjectorRightSuffix];

    /// <summary>The state of one parameter: moments (projected shape for targets), step counter, projector.</summary>
    public sealed class ParameterState : IDisposable
    {
        public required Tensor ExpAvg { get; init; }
        public required Tensor ExpAvgSq { get; init; }
        public required Tensor StepTensor { get; init; }
        public long Step { get; set; }
        public GaLoreProjector? Projector { get; init; }

        public long Bytes => ExpAvg.NumberOfElements * ExpAvg.ElementSize + ExpAvgSq.NumberOfElements * ExpAvgSq.ElementSize
            + StepTensor.ElementSize + (Projector is null ? 0 : Projector.ProjectorElements * sizeof(float));

        public void Dispose()
        {
            ExpAvg.Dispose();
            ExpAvgSq.Dispose();
            StepTensor.Dispose();
            Projector?.Dispose();
        }
    }

    readonly List<(string Name, Parameter Parameter)> _parameters;
    readonly HashSet<string> _targets;
    readonly Dictionary<string, ParameterState> _state = new(StringComparer.Ordinal);
    readonly OptimizerSettings _settings;
    readonly GaLoreOptions _options;
    readonly IGaLoreCompute _compute;
    readonly Dictionary<string, ITrainableQuantizedWeight> _quantized;
    bool _disposed;

    /// <param name="parameters">Every trainable parameter (unique names).</param>
    /// <param name="targets">Names of the 2-D weights GaLore projects; the others get AdamW.</param>
    public GaLoreOptimizer(IReadOnlyList<(string Name, Parameter Parameter)> parameters, IEnumerable<string> targets,
                           OptimizerSettings settings, GaLoreOptions options, IGaLoreCompute compute,
                           IReadOnlyDictionary<string, ITrainableQuantizedWeight>? quantized = null)
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
        _targets = new HashSet<string>(targets, StringComparer.Ordinal);
        var byName = _parameters.ToDictionary(p => p.Name, p => p.Parameter, StringComparer.Ordinal);
        foreach (var t in _targets)
        {
            if (!byName.TryGetValue(t, out var p)) throw new ArgumentException($"GaLore target '{t}' is not a trainable parameter", nameof(targets));
            if (p.ndim != 2) throw new ArgumentException($"GaLore target '{t}' has {p.ndim} dimensions; GaLore projects 2-D weights", nameof(targets));
        }
        _settings = settings;
        _options = options;
        _compute = compute;
        _quantized = new Dictionary<string, ITrainableQuantizedWeight>(quantized ?? new Dictionary<string, ITrainableQuantizedWeight>(), StringComparer.Ordinal);
        foreach (var (name, q) in _quantized)
            if (!byName.TryGetValue(name, out var p) || p.Handle != q.GradientProxy.Handle)
                throw new ArgumentException($"quantized weight '{name}' must be listed with its gradient proxy", nameof(quantized));
    }

    /// <summary>Weights stored quantized (by parameter name): updated through <see cref="ITrainableQuantizedWeight.ApplyUpdate"/>.</summary>
    public IReadOnlyDictionary<string, ITrainableQuantizedWeight> QuantizedWeights => _quantized;

    /// <summary>
    /// Q-GaLore's gradients are not among the host's trainable parameters, so the loop's global-norm clipping would
    /// miss them: refuse clipping rather than clip part of the gradient.
    /// </summary>
    public void BeginStep(BackwardStepInfo step)
    {
        if (_quantized.Count > 0 && step.MaxGradNorm > 0)
            throw new PeftConfigurationException("training:max_grad_norm", step.MaxGradNorm.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "must be 0 when GaLore trains quantized weights (their gradients are outside the loop's clipping)");
    }

    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _parameters;

    /// <summary>Names of the projected weights.</summary>
    public IReadOnlyCollection<string> Targets => _targets;

    public GaLoreOptions Options => _options;

    /// <summary>The state of a parameter, or null before its first step.</summary>
    public ParameterState? StateOf(string name) => _state.GetValueOrDefault(name);

    /// <summary>The most gradient bytes (.grad of the parameters) seen at the start of a <see cref="Step"/>: in ordinary mode every gradient exists then.</summary>
    public long PeakGradientBytes { get; private set; }

    public void Step(double learningRate)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long live = 0;
        foreach (var (_, p) in _parameters)
        {
            using var g = p.grad;
            if (g is not null) live += g.NumberOfElements * g.ElementSize;
        }
        PeakGradientBytes = Math.Max(PeakGradientBytes, live);
        if (!double.IsFinite(learningRate) || learningRate < 0) throw new ArgumentOutOfRangeException(nameof(learningRate), $"learning rate {learningRate} must be finite and >= 0");
        foreach (var (name, p) in _parameters)
        {
            using var grad = p.grad;
            if (grad is null || !p.requires_grad) continue;     // a hook (LISA) froze it: no decay, no update, no state
            StepParameter(name, p, grad, learningRate);
        }
    }

    /// <summary>One update of parameter <paramref name="name"/> from <paramref name="grad"/> (also called from a backward hook).</summary>
    public void StepParameter(string name, Parameter p, Tensor grad, double learningRate)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        // a quantized weight is updated on its float32 dequantization, then re-quantized with stochastic rounding
        var quantized = _quantized.GetValueOrDefault(name);
        Tensor w = quantized is null ? p : quantized.DenseWeight(ScalarType.Float32);
        Update(name, w, grad, learningRate);
        quantized?.ApplyUpdate(w);
    }

    void Update(string name, Tensor w, Tensor grad, double learningRate)
    {
        var s = _settings;
        if (!_targets.Contains(name))
        {
            var plain = GetOrCreate(name, w.shape, w.dtype, w.device, null);
            plain.Step++;
            plain.StepTensor.fill_(plain.Step);
            AdamUpdate.AdamWStep(w, grad, plain.ExpAvg, plain.ExpAvgSq, plain.Step, learningRate, s.WeightDecay, s.Beta1, s.Beta2, s.Epsilon);
            return;
        }

        var state = _state.GetValueOrDefault(name);
        var projector = state?.Projector ?? new GaLoreProjector(_options.ProjectionType, w.shape[0], w.shape[1], _options.Rank, _options.UpdateProjGap, _options.Scale, _compute);
        var low = projector.Project(grad, state?.Step ?? 0);                        // R: projected shape
        state ??= GetOrCreate(name, projector.ProjectedShape, ScalarType.Float32, w.device, projector);
        state.Step++;
        state.StepTensor.fill_(state.Step);
        long t = state.Step;
        AdamUpdate.UpdateMoments(state.ExpAvg, state.ExpAvgSq, low, s.Beta1, s.Beta2);
        var denom = AdamUpdate.Denominator(state.ExpAvgSq, t, s.Beta2, s.Epsilon, AdamEpsilon.BeforeBiasCorrection);
        var normalized = state.ExpAvg / denom;                                     // N = m / (sqrt(v) + ε)
        var update = projector.ProjectBack(normalized);                            // α · back(N), (m, n)
        double stepSize = AdamUpdate.StepSize(learningRate, t, s.Beta1, s.Beta2, AdamEpsilon.BeforeBiasCorrection);
        w.add_(update.to_type(w.dtype), alpha: -stepSize);
        AdamUpdate.DecayWeights(w, learningRate, s.WeightDecay);
    }

    ParameterState GetOrCreate(string name, long[] shape, ScalarType dtype, Device device, GaLoreProjector? projector)
    {
        if (_state.TryGetValue(name, out var existing)) return existing;
        var s = new ParameterState
        {
            ExpAvg = torch.zeros(shape, dtype, device).DetachFromDisposeScope(),
            ExpAvgSq = torch.zeros(shape, dtype, device).DetachFromDisposeScope(),
            StepTensor = torch.tensor(0L, dtype: ScalarType.Int64).DetachFromDisposeScope(),
            Projector = projector,
        };
        _state[name] = s;
        return s;
    }

    public void ZeroGrad()
    {
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

    public long StateBytes => _state.Values.Sum(s => s.Bytes);

    /// <summary>Every state tensor by key (aliases of the live state: do not dispose or modify).</summary>
    public IReadOnlyDictionary<string, Tensor> GetState()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, s) in _state)
        {
            result[name + ExpAvgSuffix] = s.ExpAvg;
            result[name + ExpAvgSqSuffix] = s.ExpAvgSq;
            result[name + StepSuffix] = s.StepTensor;
            if (s.Projector?.Left is { } left) result[name + ProjectorLeftSuffix] = left;
            if (s.Projector?.Right is { } right) result[name + ProjectorRightSuffix] = right;
        }
        foreach (var (name, q) in _quantized)
            foreach (var (key, t) in q.QuantizedState) result[name + QuantizedInfix + key] = t;
        return result;
    }

    /// <summary>Replace the whole state (values copied). Unknown keys, partial entries and wrong shapes throw naming the key.</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var byName = _parameters.ToDictionary(p => p.Name, p => p.Parameter, StringComparer.Ordinal);
        var quantizedState = _quantized.ToDictionary(kv => kv.Key, _ => new Dictionary<string, Tensor>(StringComparer.Ordinal), StringComparer.Ordinal);
        foreach (var key in state.Keys)
        {
            var owner = _quantized.Keys.FirstOrDefault(n => key.StartsWith(n + QuantizedInfix, StringComparison.Ordinal));
            if (owner is not null) { quantizedState[owner][key[(owner.Length + QuantizedInfix.Length)..]] = state[key]; continue; }
            var suffix = Suffixes.FirstOrDefault(x => key.EndsWith(x, StringComparison.Ordinal))
                ?? throw new ArgumentException($"optimizer state key '{key}' does not end in {string.Join(", ", Suffixes)}");
            var name = key[..^suffix.Length];
            if (!byName.ContainsKey(name)) throw new ArgumentException($"optimizer state key '{key}' names no parameter of this optimizer");
            if ((suffix == ProjectorLeftSuffix || suffix == ProjectorRightSuffix) && !_targets.Contains(name))
                throw new ArgumentException($"optimizer state key '{key}' is a projector of '{name}', which GaLore does not target in this run");
        }
        var loaded = new Dictionary<string, ParameterState>(StringComparer.Ordinal);
        try
        {
            using var noGrad = torch.no_grad();
            foreach (var (name, p) in _parameters)
            {
                bool hasAvg = state.TryGetValue(name + ExpAvgSuffix, out var avg);
                bool hasSq = state.TryGetValue(name + ExpAvgSqSuffix, out var sq);
                bool hasStep = state.TryGetValue(name + StepSuffix, out var step);
                if (!hasAvg && !hasSq && !hasStep) continue;
                if (!(hasAvg && hasSq && hasStep))
                    throw new ArgumentException($"optimizer state for '{name}' is incomplete (needs {ExpAvgSuffix}, {ExpAvgSqSuffix} and {StepSuffix})");
                if (step!.NumberOfElements != 1) throw new ArgumentException($"optimizer state key '{name}{StepSuffix}' must hold one number, has shape [{string.Join(", ", step.shape)}]");
                long t = step.to_type(ScalarType.Int64).item<long>();
                if (t < 1) throw new ArgumentException($"optimizer state key '{name}{StepSuffix}' is {t}; a stored state has step >= 1");
                GaLoreProjector? projector = null;
                long[] shape = p.shape;
                var dtype = p.dtype;
                if (_targets.Contains(name))
                {
                    projector = new GaLoreProjector(_options.ProjectionType, p.shape[0], p.shape[1], _options.Rank, _options.UpdateProjGap, _options.Scale, _compute);
                    try
                    {
                        projector.LoadBasis(state.GetValueOrDefault(name + ProjectorLeftSuffix), state.GetValueOrDefault(name + ProjectorRightSuffix));
                    }
                    catch (ArgumentException e)
                    {
                        projector.Dispose();
                        throw new ArgumentException($"optimizer state for '{name}': {e.Message} (proj_type {_options.ProjType}, rank {projector.Rank})");
                    }
                    shape = projector.ProjectedShape;
                    dtype = ScalarType.Float32;
                }
                foreach (var (key, t2) in new[] { (name + ExpAvgSuffix, avg!), (name + ExpAvgSqSuffix, sq!) })
                    if (!t2.shape.SequenceEqual(shape))
                    {
                        projector?.Dispose();
                        throw new ArgumentException($"optimizer state key '{key}' has shape [{string.Join(", ", t2.shape)}], expected [{string.Join(", ", shape)}]");
                    }
                loaded[name] = new ParameterState
                {
                    ExpAvg = avg!.detach().to(dtype, p.device, copy: true).DetachFromDisposeScope(),
                    ExpAvgSq = sq!.detach().to(dtype, p.device, copy: true).DetachFromDisposeScope(),
                    StepTensor = torch.tensor(t, dtype: ScalarType.Int64).DetachFromDisposeScope(),
                    Step = t,
                    Projector = projector,
                };
            }
        }
        catch
        {
            foreach (var s in loaded.Values) s.Dispose();
            throw;
        }
        try
        {
            foreach (var (name, q) in _quantized) q.LoadQuantizedState(quantizedState[name]);
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

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var s in _state.Values) s.Dispose();
        _state.Clear();
    }
}
