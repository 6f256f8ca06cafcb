using Peft.Abstractions;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Plugins.GaLore;

/// <summary>
/// GaLore's layer-wise mode (the paper's way to fit 7B pre-training in 22 GB): each linear weight W is updated
/// during the backward pass as soon as its gradient exists, and that gradient is freed at once.
/// <para>
/// TorchSharp 0.107 exposes no tensor backward hook (<c>Tensor.register_hook</c> /
/// <c>register_post_accumulate_grad_hook</c> are not bound; modules only have forward hooks — dotnet/TorchSharp
/// issues #1483, #1059), so the hook is built from what it has: forward hooks on each linear slot module and two
/// identity custom autograd functions (<c>torch.autograd.SingleTensorFunction</c>) around the linear:
/// </para>
/// <code>
///   x ──TapInput──▶ y = linear(x; W) ──TapOutput──▶        W.requires_grad = false (autograd never makes W.grad)
///   backward:  TapOutput(∂L/∂y):  G = (∂L/∂y)ᵀ·x  (out, in), summed over batch and positions  — W's gradient
///              linear:            ∂L/∂x = ∂L/∂y·W  (still the old W)
///              TapInput(∂L/∂x):   optimizer step of W with G, G disposed
/// </code>
/// The update waits for TapInput so that the linear's own backward has used W before W changes in place. At most
/// one such G exists at a time per linear being back-propagated; the other trainable parameters (embeddings,
/// norms, a tied head) keep ordinary gradients and are stepped by <see cref="Step"/> after backward. As in the
/// official code, layer-wise mode has no global-norm clipping and no gradient accumulation (both need every
/// gradient at once): it refuses <c>training:max_grad_norm</c> &gt; 0 and <c>gradient_accumulation_steps</c> &gt; 1.
/// </summary>
public sealed class GaLoreLayerwiseOptimizer : IBackwardStepOptimizer
{
    /// <summary>One tapped linear: its weight, and the gradient computed by TapOutput waiting for TapInput.</summary>
    internal sealed class Site(GaLoreLayerwiseOptimizer owner, string name, Parameter weight)
    {
        public readonly string Name = name;
        public readonly Parameter Weight = weight;
        public Tensor? Pending;

        public void Receive(Tensor gradient)
        {
            Pending?.Dispose();
            Pending = gradient;
            owner.Measure(gradient.NumberOfElements * gradient.ElementSize);
        }

        public void ApplyPending()
        {
            if (Pending is null) return;
            try { owner.Inner.StepParameter(Name, Weight, Pending, owner._learningRate); }
            finally { Pending.Dispose(); Pending = null; }
        }
    }

    readonly List<Site> _sites = new();
    readonly List<IDisposable> _hooks = new();
    double _learningRate = double.NaN;
    long _peakGradientBytes;

    public GaLoreLayerwiseOptimizer(GaLoreOptimizer inner, IPeftModel model)
    {
        Inner = inner;
        var byHandle = inner.Parameters.GroupBy(p => p.Parameter.Handle).ToDictionary(g => g.Key, g => g.First());
        // a weight used by two slots (tied) is not tapped: its gradient is only complete after the whole backward
        var useCount = new Dictionary<IntPtr, int>();
        foreach (var slot in model.LinearSlots)
            foreach (var (_, p) in model.GetLinear(slot.Name).Module.named_parameters())
                useCount[p.Handle] = useCount.GetValueOrDefault(p.Handle) + 1;
        var embedded = model.NamedParameters().Select(p => p.Parameter.Handle).GroupBy(h => h).Where(g => g.Count() > 1).Select(g => g.Key).ToHashSet();
        foreach (var slot in model.LinearSlots)
        {
            var module = model.GetLinear(slot.Name).Module;
            var weights = module.named_parameters()
                .Where(np => np.parameter.ndim == 2 && np.parameter.shape[0] == slot.OutFeatures && np.parameter.shape[1] == slot.InFeatures)
                .Where(np => byHandle.ContainsKey(np.parameter.Handle) && useCount[np.parameter.Handle] == 1 && !embedded.Contains(np.parameter.Handle))
                .ToList();
            if (weights.Count != 1) continue;                     // adapters or shared weights: stepped after backward
            var (name, p) = byHandle[weights[0].parameter.Handle];
            var site = new Site(this, name, p);
            _sites.Add(site);
            p.requires_grad_(false);
            if (module is not nn.Module<Tensor, Tensor> hookable) continue;
            _hooks.Add(new Unhook(hookable.register_forward_pre_hook((_, x) => TapInput.Wrap(site, x)).remove));
            _hooks.Add(new Unhook(hookable.register_forward_hook((_, x, y) => TapOutput.Wrap(site, x, y)).remove));
        }
    }

    sealed class Unhook(Action remove) : IDisposable
    {
        public void Dispose() => remove();
    }

    public GaLoreOptimizer Inner { get; }

    /// <summary>Names of the weights updated during backward.</summary>
    public IReadOnlyList<string> LayerwiseParameters => _sites.Select(s => s.Name).ToList();

    public long PeakGradientBytes => _peakGradientBytes;

    void Measure(long pendingBytes)
    {
        long live = pendingBytes;
        foreach (var (_, p) in Inner.Parameters)
        {
            using var g = p.grad;
            if (g is not null) live += g.NumberOfElements * g.ElementSize;
        }
        _peakGradientBytes = Math.Max(_peakGradientBytes, live);
    }

    public void BeginStep(BackwardStepInfo step)
    {
        if (step.MicroBatches != 1)
            throw new PeftConfigurationException("training:gradient_accumulation_steps", step.MicroBatches.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "must be 1 with optimizer:layerwise (each weight is updated from one backward pass)");
        if (step.MaxGradNorm > 0)
            throw new PeftConfigurationException("training:max_grad_norm", step.MaxGradNorm.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "must be 0 with optimizer:layerwise (gradients are consumed during backward, so no global norm exists to clip)");
        _learningRate = step.LearningRate;
    }

    public void Step(double learningRate)
    {
        Measure(0);
        foreach (var site in _sites) site.ApplyPending();       // a linear whose input needed no gradient
        Inner.Step(learningRate);
    }

    public void ZeroGrad()
    {
        foreach (var site in _sites) { site.Pending?.Dispose(); site.Pending = null; }
        Inner.ZeroGrad();
    }

    public void ReleaseState(IEnumerable<string> parameterNames) => Inner.ReleaseState(parameterNames);
    public long StateBytes => Inner.StateBytes;
    public IReadOnlyDictionary<string, Tensor> GetState() => Inner.GetState();
    public void LoadState(IReadOnlyDictionary<string, Tensor> state) => Inner.LoadState(state);

    public void Dispose()
    {
        foreach (var h in _hooks) h.Dispose();
        _hooks.Clear();
        foreach (var site in _sites) { site.Pending?.Dispose(); site.Pending = null; site.Weight.requires_grad_(true); }
        Inner.Dispose();
    }

    /// <summary>Identity on x; its backward runs after the linear's and applies the site's pending update.</summary>
    internal sealed class TapInput : torch.autograd.SingleTensorFunction<TapInput>
    {
        public override string Name => "GaLoreTapInput";

        public static Tensor Wrap(Site site, Tensor x)
        {
            if (!torch.is_grad_enabled()) return x;
            // an input that needs no gradient still gets a backward node, so the update runs after the linear's backward
            var input = x.requires_grad ? x : x.detach().requires_grad_(true);
            return apply(input, new Holder(site));
        }

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            ctx.save_data("site", ((Holder)vars[1]).Site);
            var x = (Tensor)vars[0];
            return x.view(x.shape);
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            ((Site)ctx.get_data("site")).ApplyPending();
            return [gradOutput, null!];
        }
    }

    /// <summary>Identity on y; its backward computes W's gradient G = (∂L/∂y)ᵀ x and hands it to the site.</summary>
    internal sealed class TapOutput : torch.autograd.SingleTensorFunction<TapOutput>
    {
        public override string Name => "GaLoreTapOutput";

        public static Tensor Wrap(Site site, Tensor x, Tensor y)
        {
            if (!torch.is_grad_enabled() || !y.requires_grad) return y;
            return apply(y, new Holder(site, x));
        }

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var holder = (Holder)vars[1];
            ctx.save_data("site", holder.Site);
            ctx.save_for_backward([holder.Input!]);
            var y = (Tensor)vars[0];
            return y.view(y.shape);
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var site = (Site)ctx.get_data("site");
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var x = ctx.get_saved_variables()[0];
                long inF = x.shape[^1], outF = gradOutput.shape[^1];
                // G (out, in) = Σ_{batch, positions} (∂L/∂y)ᵀ x
                var g = gradOutput.reshape(-1, outF).t().matmul(x.reshape(-1, inF).to_type(gradOutput.dtype));
                site.Receive(g.to_type(site.Weight.dtype).DetachFromDisposeScope());
            }
            return [gradOutput, null!];
        }
    }

    /// <summary>Carries non-tensor arguments through <c>apply</c> (anything not a Tensor is not an autograd input).</summary>
    sealed class Holder(Site site, Tensor? input = null)
    {
        public Site Site { get; } = site;
        public Tensor? Input { get; } = input;
    }
}
