using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Model;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.TestPlugins.Composition;

/// <summary>
/// Test plugin for the composition matrix (tests/Peft.Tests/Composition): a quantizer, a hook and two optimizer
/// strategies, each of which writes what the composer asked of it, in order, into the process-wide list at
/// <c>AppDomain.CurrentDomain.GetData("peft.composition.log")</c> (a <c>List&lt;string&gt;</c> the test installs;
/// AppDomain data crosses the plugin's load context).
/// </summary>
public sealed class CompositionPlugin : IPeftPlugin
{
    public const string LogKey = "peft.composition.log";

    public string Name => "test-composition";
    public string Description => "test quantizer, hook and optimizer strategies that record the composition order";

    public void ConfigureServices(IServiceCollection services)
    {
        services.AddSingleton<IQuantizer, RoundingInt8Quantizer>();
        services.AddSingleton<ITrainingHookFactory, RecordingHookFactory>();
        services.AddSingleton<IOptimizerStrategy>(new RecordingSgdStrategy(trainsQuantizedWeights: false));
        services.AddSingleton<IOptimizerStrategy>(new RecordingSgdStrategy(trainsQuantizedWeights: true));
    }

    internal static void Log(string entry)
    {
        if (AppDomain.CurrentDomain.GetData(LogKey) is List<string> log)
            lock (log) log.Add(entry);
    }
}

/// <summary><c>test-int8</c>: W ≈ q · s per output row, q int8 in [-127, 127], s = max|W_row| / 127 (absmax).</summary>
public sealed class RoundingInt8Quantizer : IQuantizer
{
    public string Name => "test-int8";
    public string Description => "test absmax int8 quantizer (per output row)";
    public double BitsPerParameter(IConfiguration options) => 8;

    public ILinearLayer Quantize(string moduleName, ILinearLayer layer, IConfiguration options)
    {
        OptionsBinding.Bind<NoOptions>(options, "name");
        CompositionPlugin.Log($"quantize {moduleName}");
        return new Int8Linear(layer);
    }

    public sealed class NoOptions;
}

/// <summary>A frozen int8 linear: y = x (q · s)ᵀ; q (out, in) int8 and s (out, 1) float32 are buffers.</summary>
public sealed class Int8Linear : nn.Module<Tensor, Tensor>, ILinearLayer
{
#pragma warning disable IDE1006
    readonly Tensor qweight;
    readonly Tensor scale;
#pragma warning restore IDE1006

    public Int8Linear(ILinearLayer dense) : base(nameof(Int8Linear))
    {
        if (dense.Bias is not null) throw new NotSupportedException("test-int8 quantizes bias-free linears only");
        InFeatures = dense.InFeatures;
        OutFeatures = dense.OutFeatures;
        using (var scope = torch.NewDisposeScope())
        {
            var w = dense.DenseWeight();
            var s = w.abs().amax([1], keepdim: true).clamp_min(1e-12) / 127;
            qweight = (w / s).round().clamp(-127, 127).to(ScalarType.Int8).MoveToOuterDisposeScope();
            scale = s.MoveToOuterDisposeScope();
        }
        register_buffer(nameof(qweight), qweight);
        register_buffer(nameof(scale), scale);
    }

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => null;
    public bool CanSetWeight => false;
    public void SetDenseWeight(Tensor weight) => throw new NotSupportedException("test-int8 layers are frozen");

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        return (qweight.to(ScalarType.Float32) * scale).to(dtype).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return nn.functional.linear(x, DenseWeight(x.dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary><c>test-hook</c>: records its creation (with its <c>tag</c> option) and does nothing else.</summary>
public sealed class RecordingHookFactory : ITrainingHookFactory
{
    public string Name => "test-hook";
    public string Description => "test hook that records its creation";

    public ITrainingHook Create(IConfiguration options)
    {
        var o = OptionsBinding.Bind<HookOptions>(options, "name");
        CompositionPlugin.Log($"hook {o.Tag}");
        return new RecordingHook(o.Tag);
    }

    public sealed class HookOptions
    {
        [ConfigurationKeyName("tag")] public string Tag { get; set; } = "";
    }

    public sealed record RecordingHook(string Tag) : ITrainingHook;
}

/// <summary>
/// <c>test-sgd</c> / <c>test-quantized-sgd</c>: plain SGD, recording the parameters it was given. The second one
/// declares <see cref="IOptimizerStrategy.TrainsQuantizedWeights"/> (the Q-GaLore shape: quantizer, no method).
/// </summary>
public sealed class RecordingSgdStrategy(bool trainsQuantizedWeights) : IOptimizerStrategy
{
    public string Name => trainsQuantizedWeights ? "test-quantized-sgd" : "test-sgd";
    public string Description => "test SGD that records its parameters";
    public bool TrainsQuantizedWeights => trainsQuantizedWeights;

    public IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options)
    {
        OptionsBinding.Bind<NoOptions>(options, "name");
        CompositionPlugin.Log($"optimizer {Name} over {parameters.Count} parameters");
        return new Sgd(parameters);
    }

    public sealed class NoOptions;

    /// <summary>θ ← θ − lr · ∇θ. <see cref="GetState"/> returns the parameters it updates, by name (aliases).</summary>
    public sealed class Sgd(IReadOnlyList<(string Name, Parameter Parameter)> parameters) : IPeftOptimizer
    {
        public void Step(double learningRate)
        {
            using var noGrad = torch.no_grad();
            foreach (var (_, p) in parameters)
                if (p.grad is { } g && !g.IsInvalid) p.sub_(g * learningRate);
        }

        public void ZeroGrad()
        {
            foreach (var (_, p) in parameters) p.grad?.zero_();
        }

        public void ReleaseState(IEnumerable<string> parameterNames) { }
        public long StateBytes => 0;
        public IReadOnlyDictionary<string, Tensor> GetState() => parameters.ToDictionary(p => p.Name, p => (Tensor)p.Parameter);
        public void LoadState(IReadOnlyDictionary<string, Tensor> state) { }
        public void Dispose() { }
    }
}
