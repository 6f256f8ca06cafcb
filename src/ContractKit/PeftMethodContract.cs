using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.ContractKit;

/// <summary>
/// The contract every <see cref="IPeftMethod"/> honours, after HF PEFT's <c>testing_common</c>: each
/// <see cref="ContractProperty"/> is checked on fresh base models from an <see cref="IContractHost"/>, and a
/// broken property throws a <see cref="ContractViolation"/> naming it. Exceptions the method throws while a
/// property is checked are violations of that property too.
/// <para>
/// The adapter is attached as the host composes it: every model parameter frozen, then the adapter's
/// <see cref="IAdapter.TrainableParameters"/> set to require grad. Where a fresh adapter could hide a fault
/// (LoRA's B = 0 makes every output change zero), its trainable parameters are first moved by a seeded
/// perturbation p += 0.05·N(0, 1) (N(0, 1)·0.05 around 1 for a scale), so merge, save/load, disable and
/// independence are checked on an adapter that changes the output.
/// </para>
/// </summary>
public static class PeftMethodContract
{
    public const double InitTolerance = 1e-6;
    public const double MergeTolerance = 1e-5;
    public const double UnmergeTolerance = 1e-6;
    public const double DisableTolerance = 1e-6;

    public static IReadOnlyList<ContractProperty> Properties { get; } = Enum.GetValues<ContractProperty>();

    /// <summary>Check one property; throws <see cref="ContractViolation"/> when it is broken. Returns false when the method declares it does not apply.</summary>
    public static bool Check(ContractProperty property, IContractHost host, MethodCase method)
    {
        try
        {
            using var scope = torch.NewDisposeScope();
            switch (property)
            {
                case ContractProperty.EqualsBaseAtInit:
                    if (!method.EqualsBaseAtInit) return false;
                    EqualsBaseAtInit(host, method);
                    break;
                case ContractProperty.OnlyMethodParametersGetGradients: OnlyMethodParametersGetGradients(host, method); break;
                case ContractProperty.TrainingStepLeaksNoTensor: TrainingStepLeaksNoTensor(host, method); break;
                case ContractProperty.SaveLoadBitIdentical: SaveLoadBitIdentical(host, method); break;
                case ContractProperty.MergeMatchesUnmerged:
                    if (!method.CanMerge) return false;
                    MergeMatchesUnmerged(host, method);
                    break;
                case ContractProperty.DisabledGivesBase: DisabledGivesBase(host, method); break;
                case ContractProperty.TwoAdaptersIndependent: TwoAdaptersIndependent(host, method); break;
                case ContractProperty.BadAdapterFileRefused: BadAdapterFileRefused(host, method); break;
                default: throw new ArgumentOutOfRangeException(nameof(property));
            }
            return true;
        }
        catch (ContractViolation)
        {
            throw;
        }
        catch (Exception e)
        {
            throw new ContractViolation(property, method.Method, $"on {host.ModelName} it threw {e.GetType().Name}: {e.Message}", e);
        }
    }

    /// <summary>Check every property; the violations found (empty: the method honours the contract).</summary>
    public static IReadOnlyList<ContractViolation> CheckAll(IContractHost host, MethodCase method)
    {
        var violations = new List<ContractViolation>();
        foreach (var property in Properties)
        {
            try { Check(property, host, method); }
            catch (ContractViolation v) { violations.Add(v); }
        }
        return violations;
    }

    // ------------------------------------------------------------------------------------------ properties

    static void EqualsBaseAtInit(IContractHost host, MethodCase c)
    {
        using var m = host.CreateModel();
        var ids = host.SampleInputIds();
        var before = Logits(m, ids);
        Attach(host, m, c, "default");
        var after = Logits(m, ids);
        double diff = MaxAbsDiff(after, before);
        if (!(diff <= InitTolerance))
            Fail(ContractProperty.EqualsBaseAtInit, c, $"on {host.ModelName} the freshly attached adapter changes the logits by max |Δ| = {diff:G3} (> {InitTolerance:G1}); declare EqualsBaseAtInit = false if the method is not meant to start at the base");
    }

    static void OnlyMethodParametersGetGradients(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.OnlyMethodParametersGetGradients;
        using var m = host.CreateModel();
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 11);
        var trainable = adapter.TrainableParameters;
        if (trainable.Count == 0) Fail(P, c, "the adapter has no trainable parameters");
        var trainableHandles = trainable.Select(p => p.Parameter.Handle).ToHashSet();
        var modelParameters = m.Model.NamedParameters().ToList();
        var modelHandles = modelParameters.Select(p => p.Parameter.Handle).ToHashSet();
        var unregistered = trainable.FirstOrDefault(p => !modelHandles.Contains(p.Parameter.Handle));
        if (unregistered.Parameter is not null)
            Fail(P, c, $"trainable parameter '{unregistered.Name}' is not among the model's parameters (register it in the adapter layer's module)");

        m.Train(true);
        var ids = host.SampleInputIds();
        Loss(m.Logits(ids), ids).backward();
        foreach (var (name, p) in modelParameters)
        {
            if (trainableHandles.Contains(p.Handle)) continue;
            if (p.grad is { } g && !g.IsInvalid)
                Fail(P, c, $"on {host.ModelName} parameter '{name}' is not the adapter's but received a gradient (requires_grad = {p.requires_grad})");
        }
        foreach (var (name, p) in trainable)
        {
            var g = p.grad;
            if (g is null || g.IsInvalid) Fail(P, c, $"on {host.ModelName} trainable parameter '{name}' received no gradient");
            else if (g.abs().sum().item<float>() == 0f) Fail(P, c, $"on {host.ModelName} trainable parameter '{name}' received an all-zero gradient");
        }
    }

    static void TrainingStepLeaksNoTensor(IContractHost host, MethodCase c)
    {
        using var m = host.CreateModel();
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 12);
        var parameters = adapter.TrainableParameters.Select(p => p.Parameter).ToList();
        using var ids = host.SampleInputIds().DetachFromDisposeScope();
        m.Train(true);
        var live = new List<long>();
        for (int step = 0; step < 6; step++)
        {
            using (var scope = torch.NewDisposeScope())
            {
                Loss(m.Logits(ids), ids).backward();
                using var noGrad = torch.no_grad();
                foreach (var p in parameters)
                    if (p.grad is { } g && !g.IsInvalid) { p.sub_(g * 1e-3); g.zero_(); }
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        // Step 1 creates the gradients; from step 2 on every step must free all it made.
        if (live.Skip(2).Any(n => n != live[1]))
            Fail(ContractProperty.TrainingStepLeaksNoTensor, c,
                $"on {host.ModelName} live TorchSharp tensors after each training step: {string.Join(", ", live)} (they must stay constant after the first step)");
    }

    static void SaveLoadBitIdentical(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.SaveLoadBitIdentical;
        var ids = host.SampleInputIds();
        using var m = host.CreateModel();
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 13);
        var expectedLogits = Logits(m, ids);
        var expected = adapter.GetStateDict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var dir = NewDirectory();
        try
        {
            host.SaveAdapter(adapter, dir);
            using var fresh = host.CreateModel();
            var loaded = host.LoadAdapter(dir, fresh.Model);
            var state = loaded.GetStateDict();
            var missing = expected.Keys.FirstOrDefault(k => !state.ContainsKey(k));
            if (missing is not null) Fail(P, c, $"after save → load the tensor '{missing}' is missing");
            var extra = state.Keys.FirstOrDefault(k => !expected.ContainsKey(k));
            if (extra is not null) Fail(P, c, $"after save → load there is a tensor '{extra}' that was not saved");
            foreach (var (key, t) in expected)
            {
                var back = state[key];
                if (back.dtype != t.dtype || !back.shape.SequenceEqual(t.shape) || !BitEqual(back, t))
                    Fail(P, c, $"tensor '{key}' differs after save → load ({t.dtype} [{string.Join(", ", t.shape)}] saved, {back.dtype} [{string.Join(", ", back.shape)}] loaded, max |Δ| = {MaxAbsDiffSafe(back, t):G3})");
            }
            var logits = Logits(fresh, ids);
            if (!BitEqual(logits, expectedLogits))
                Fail(P, c, $"on {host.ModelName} the loaded adapter's logits differ from the saved one's by max |Δ| = {MaxAbsDiff(logits, expectedLogits):G3} (must be bit-identical)");
        }
        finally { DeleteDirectory(dir); }
    }

    static void MergeMatchesUnmerged(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.MergeMatchesUnmerged;
        var ids = host.SampleInputIds();
        using var m = host.CreateModel();
        var original = m.Model.LinearSlots.ToDictionary(s => s.Name, s => m.Model.GetLinear(s.Name).DenseWeight());
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 14);
        var unmerged = Logits(m, ids);
        double scale = Math.Max(1.0, unmerged.abs().max().item<float>());

        adapter.Merge(safe: true);
        if (!adapter.Merged) Fail(P, c, "Merged is false after Merge()");
        var merged = Logits(m, ids);
        double diff = MaxAbsDiff(merged, unmerged);
        if (!(diff <= MergeTolerance * scale))
            Fail(P, c, $"on {host.ModelName} merged logits differ from unmerged ones by max |Δ| = {diff:G3} (> {MergeTolerance:G1} × {scale:G3})");

        adapter.Unmerge();
        if (adapter.Merged) Fail(P, c, "Merged is still true after Unmerge()");
        var back = Logits(m, ids);
        diff = MaxAbsDiff(back, unmerged);
        if (!(diff <= MergeTolerance * scale))
            Fail(P, c, $"on {host.ModelName} logits after merge → unmerge differ from the unmerged ones by max |Δ| = {diff:G3}");
        foreach (var module in adapter.TargetModules)
        {
            var layer = m.Model.GetLinear(module);
            var baseLayer = layer is IAdapterLayer a ? a.BaseLayer : layer;
            var weight = baseLayer.DenseWeight();
            double w = MaxAbsDiff(weight, original[module]);
            if (!(w <= UnmergeTolerance))
                Fail(P, c, $"on {host.ModelName} unmerge leaves the base weight of '{module}' off by max |Δ| = {w:G3} (> {UnmergeTolerance:G1})");
        }
    }

    static void DisabledGivesBase(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.DisabledGivesBase;
        var ids = host.SampleInputIds();
        using var m = host.CreateModel();
        var baseLogits = Logits(m, ids);
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 15);
        var adapted = Logits(m, ids);
        if (MaxAbsDiff(adapted, baseLogits) == 0)
            Fail(P, c, $"on {host.ModelName} moving the adapter's parameters does not change the logits, so disabling cannot be observed");
        adapter.Enabled = false;
        if (adapter.Enabled) Fail(P, c, "Enabled is still true after setting it to false");
        double diff = MaxAbsDiff(Logits(m, ids), baseLogits);
        if (!(diff <= DisableTolerance))
            Fail(P, c, $"on {host.ModelName} the disabled adapter's logits differ from the base by max |Δ| = {diff:G3} (> {DisableTolerance:G1})");
        adapter.Enabled = true;
        diff = MaxAbsDiff(Logits(m, ids), adapted);
        if (!(diff <= DisableTolerance))
            Fail(P, c, $"on {host.ModelName} re-enabling the adapter does not restore its logits (max |Δ| = {diff:G3})");
    }

    static void TwoAdaptersIndependent(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.TwoAdaptersIndependent;
        var ids = host.SampleInputIds();
        using var m = host.CreateModel();
        var baseLogits = Logits(m, ids);
        var first = Attach(host, m, c, "first");
        Perturb(first, seed: 16);
        var firstOnly = Logits(m, ids);
        var firstState = first.GetStateDict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var second = Attach(host, m, c, "second");
        if (first.TrainableParameters.Select(p => p.Parameter.Handle).Intersect(second.TrainableParameters.Select(p => p.Parameter.Handle)).Any())
        {
            var shared = first.TrainableParameters.First(p => second.TrainableParameters.Any(q => q.Parameter.Handle == p.Parameter.Handle));
            Fail(P, c, $"adapters 'first' and 'second' share the parameter '{shared.Name}'");
        }
        Perturb(second, seed: 17);
        foreach (var (key, t) in firstState)
            if (!first.GetStateDict().TryGetValue(key, out var now) || !BitEqual(now, t))
                Fail(P, c, $"changing adapter 'second' changed tensor '{key}' of adapter 'first'");

        second.Enabled = false;
        double scale = Math.Max(1.0, firstOnly.abs().max().item<float>());
        double diff = MaxAbsDiff(Logits(m, ids), firstOnly);
        if (!(diff <= MergeTolerance * scale))
            Fail(P, c, $"on {host.ModelName} with 'second' disabled the logits differ from those of 'first' alone by max |Δ| = {diff:G3}");

        second.Enabled = true;
        first.Enabled = false;
        var secondInPair = Logits(m, ids);
        using (var alone = host.CreateModel())
        {
            var only = Attach(host, alone, c, "second");
            only.LoadStateDict(second.GetStateDict());
            var secondAlone = Logits(alone, ids);
            diff = MaxAbsDiff(secondInPair, secondAlone);
            if (!(diff <= MergeTolerance * Math.Max(1.0, secondAlone.abs().max().item<float>())))
                Fail(P, c, $"on {host.ModelName} with 'first' disabled the logits differ from those of 'second' alone by max |Δ| = {diff:G3}");
        }

        second.Enabled = false;
        diff = MaxAbsDiff(Logits(m, ids), baseLogits);
        if (!(diff <= DisableTolerance))
            Fail(P, c, $"on {host.ModelName} with both adapters disabled the logits differ from the base by max |Δ| = {diff:G3}");
    }

    static void BadAdapterFileRefused(IContractHost host, MethodCase c)
    {
        const ContractProperty P = ContractProperty.BadAdapterFileRefused;
        using var m = host.CreateModel();
        var adapter = Attach(host, m, c, "default");
        Perturb(adapter, seed: 18);
        var keys = adapter.GetStateDict().Keys.Order(StringComparer.Ordinal).ToList();
        if (keys.Count == 0) Fail(P, c, "the adapter's state dict is empty");
        string unknown = keys[0] + "_unknown";
        string missing = keys[^1];
        string misshapen = keys[0];

        // (1) the method's own LoadStateDict, on a fresh adapter; (2) the host's adapter file, through the method
        var corruptions = new (string Kind, string Key, Func<IReadOnlyDictionary<string, Tensor>, Dictionary<string, Tensor>> Change)[]
        {
            ("an unknown tensor", unknown, t => new Dictionary<string, Tensor>(t) { [unknown] = t[keys[0]].detach().clone() }),
            ("a missing tensor", missing, t => t.Where(kv => kv.Key != missing).ToDictionary(kv => kv.Key, kv => kv.Value)),
            ("a wrongly shaped tensor", misshapen, t => new Dictionary<string, Tensor>(t) { [misshapen] = torch.cat([t[misshapen].flatten(), torch.zeros(1, dtype: t[misshapen].dtype)]) }),
        };
        foreach (var (kind, key, change) in corruptions)
        {
            using (var fresh = host.CreateModel())
            {
                var target = Attach(host, fresh, c, "default");
                var bad = change(adapter.GetStateDict());
                ExpectRefusal(P, c, $"LoadStateDict with {kind}", key, () => target.LoadStateDict(bad));
            }
            var dir = NewDirectory();
            try
            {
                host.SaveAdapter(adapter, dir);
                host.RewriteAdapterTensors(dir, change);
                using var fresh = host.CreateModel();
                ExpectRefusal(P, c, $"loading an adapter file with {kind}", key, () => host.LoadAdapter(dir, fresh.Model));
            }
            finally { DeleteDirectory(dir); }
        }
    }

    static void ExpectRefusal(ContractProperty p, MethodCase c, string what, string key, Action act)
    {
        try
        {
            act();
        }
        catch (Exception e) when (e is not ContractViolation)
        {
            if (!e.Message.Contains(key, StringComparison.Ordinal))
                Fail(p, c, $"{what} was refused, but the message does not name the key '{key}': {e.Message}");
            return;
        }
        Fail(p, c, $"{what} ('{key}') was accepted; it must be refused naming the key");
    }

    // ------------------------------------------------------------------------------------------ helpers

    /// <summary>Attach as the host composes: everything frozen, then the adapter's trainable parameters require grad.</summary>
    public static IAdapter Attach(IContractHost host, IContractModel model, MethodCase c, string adapterName)
    {
        foreach (var (_, p) in model.Model.NamedParameters()) p.requires_grad_(false);
        var adapter = host.Method(c.Method).Attach(model.Model, adapterName, Configuration(c));
        foreach (var (_, p) in adapter.TrainableParameters) p.requires_grad_(true);
        return adapter;
    }

    public static IConfiguration Configuration(MethodCase c) =>
        new ConfigurationBuilder()
            .AddInMemoryCollection(c.Options.Append(new KeyValuePair<string, string?>("name", c.Method)))
            .Build();

    /// <summary>Move every trainable parameter by 0.05·N(0, 1) from a seeded generator (deterministic).</summary>
    public static void Perturb(IAdapter adapter, ulong seed)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var generator = new Generator(seed);
        foreach (var (_, p) in adapter.TrainableParameters.OrderBy(p => p.Name, StringComparer.Ordinal))
            p.add_(torch.randn(p.shape, dtype: ScalarType.Float32, generator: generator).to(p.dtype) * 0.05);
    }

    static Tensor Logits(IContractModel m, Tensor ids)
    {
        m.Train(false);
        using var noGrad = torch.no_grad();
        return m.Logits(ids);
    }

    /// <summary>Next-token cross-entropy of the ids under the logits.</summary>
    static Tensor Loss(Tensor logits, Tensor ids)
    {
        long v = logits.shape[^1];
        return nn.functional.cross_entropy(logits[.., ..^1].reshape(-1, v), ids[.., 1..].reshape(-1));
    }

    /// <summary>Same dtype, shape and bits.</summary>
    static bool BitEqual(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static double MaxAbsDiff(Tensor a, Tensor b) => (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    static string MaxAbsDiffSafe(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) ? MaxAbsDiff(a, b).ToString("G3") : "n/a";

    static string NewDirectory() => Directory.CreateTempSubdirectory("peft-contract-").FullName;

    static void DeleteDirectory(string dir)
    {
        try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    static void Fail(ContractProperty p, MethodCase c, string detail) => throw new ContractViolation(p, c.Method, detail);
}
