using Microsoft.Extensions.Configuration;
using Peft.Host.Composition;
using Peft.Host.Model;
using Peft.Host.Planning;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Peft.Tests.Planning;

/// <summary>
/// The plan against what training really holds: the real composition (plugins from the test output's plugins/
/// folder) on stories260K and on the stories15M shape, two optimizer steps as the trainer takes them, then the
/// held tensors counted. Weights, gradients and optimizer state must equal the plan to the byte; activations
/// (the C-heap bytes a forward pass leaves alive, <see cref="ProcessMemory.HeapInUse"/>) must be within 25% of the plan.
/// <para>
/// The cases are data: each names the components it needs, and runs once the loaded plugins provide them all,
/// so DoRA, QLoRA, GaLore and LISA join this test as their plugins land.
/// </para>
/// <para>
/// The C-heap reading is process-wide, so these cases run alone (the serial collection, after the parallel ones):
/// another test allocating or freeing meanwhile would be counted as this pass's activations.
/// </para>
/// </summary>
[Collection(SerialStories260KCollection.Name)]
public sealed class PlanAgainstTrainingTests(Stories260KFixture fx, ITestOutputHelper output)
{
    public const double ActivationTolerance = 0.25;

    /// <summary>(case name, components JSON-ish keys, needed component names "kind:name").</summary>
    public static readonly (string Name, Dictionary<string, string?> Keys)[] Cases =
    [
        ("full", new() { ["method:name"] = "full" }),
        ("lora-qv", new() { ["method:name"] = "lora", ["method:r"] = "4", ["method:lora_alpha"] = "8", ["method:target_modules:0"] = "q_proj", ["method:target_modules:1"] = "v_proj" }),
        ("lora-all-linear-bf16-base", new() { ["method:name"] = "lora", ["method:r"] = "2", ["method:target_modules"] = "all-linear", ["training:base_dtype"] = "bfloat16" }),
        ("dora-qv", new() { ["method:name"] = "dora", ["method:r"] = "4", ["method:target_modules:0"] = "q_proj", ["method:target_modules:1"] = "v_proj" }),
        ("qlora", new() { ["quantization:name"] = "nf4", ["method:name"] = "lora", ["method:r"] = "4" }),
        ("qlora-dora", new() { ["quantization:name"] = "nf4", ["method:name"] = "dora", ["method:r"] = "4" }),
        ("galore", new() { ["optimizer:name"] = "galore", ["optimizer:rank"] = "8" }),
        ("lisa", new() { ["hooks:0:name"] = "lisa", ["hooks:0:k"] = "2" }),
        ("lisa-lora", new() { ["method:name"] = "lora", ["method:r"] = "4", ["hooks:0:name"] = "lisa", ["hooks:0:k"] = "2" }),
    ];

    static readonly Lazy<(HashSet<string> Methods, HashSet<string> Quantizers, HashSet<string> Optimizers, HashSet<string> Hooks)> Available = new(() =>
    {
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        static HashSet<string> S(IEnumerable<string> names) => new(names, StringComparer.OrdinalIgnoreCase);
        return (S(catalog.MethodNames.Append("full")), S(catalog.QuantizerNames), S(catalog.OptimizerStrategyNames), S(catalog.HookNames));
    });

    /// <summary>The cases whose components are all loaded now (the rest join when their plugins land).</summary>
    public static IEnumerable<object[]> LoadedCases()
    {
        var a = Available.Value;
        foreach (var (name, keys) in Cases)
        {
            bool ok = (keys.GetValueOrDefault("method:name") is not { } m || a.Methods.Contains(m))
                      && (keys.GetValueOrDefault("quantization:name") is not { } q || a.Quantizers.Contains(q))
                      && (keys.GetValueOrDefault("optimizer:name") is not { } o || a.Optimizers.Contains(o))
                      && (keys.GetValueOrDefault("hooks:0:name") is not { } h || a.Hooks.Contains(h));
            if (ok) yield return [name];
        }
    }

    [Fact]
    public void Full_and_lora_are_among_the_checked_cases()
    {
        LoadedCases().Select(c => (string)c[0]).Should().Contain(["full", "lora-qv", "lora-all-linear-bf16-base"]);
    }

    [Theory]
    [MemberData(nameof(LoadedCases))]
    public void Stories260K_holds_what_the_plan_says(string caseName)
    {
        var config = LlamaConfig.Load(Path.Combine(fx.ModelDir, HfModelFolder.ConfigFile));
        Check(caseName, () => HfModelFolder.Load(fx.ModelDir), config, batch: 8, seqLen: 256);
    }

    [Theory]
    [MemberData(nameof(LoadedCases))]
    public void Stories15M_shape_holds_what_the_plan_says(string caseName)
    {
        // llama2.c's stories15M: dim 288, 6 layers, 6 heads, hidden 768, vocab 32000, shared classifier
        var config = new LlamaConfig
        {
            HiddenSize = 288, IntermediateSize = 768, NumHiddenLayers = 6, NumAttentionHeads = 6, NumKeyValueHeads = 6,
            VocabSize = 32000, MaxPositionEmbeddings = 256, TieWordEmbeddings = true, RmsNormEps = 1e-5,
        };
        Check(caseName, () => { torch.manual_seed(3); return new LlamaForCausalLM(config); }, config, batch: 2, seqLen: 256);
    }

    void Check(string caseName, Func<LlamaForCausalLM> load, LlamaConfig config, int batch, int seqLen)
    {
        var keys = new Dictionary<string, string?>(Cases.First(c => c.Name == caseName).Keys, StringComparer.OrdinalIgnoreCase);
        var root = new ConfigurationBuilder().AddInMemoryCollection(keys).Build();
        var training = Abstractions.Configuration.OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingConfiguration.TrainingSection));

        // the plan, in what peft train does: fp32 trainable state and activations, base dtype from training:base_dtype
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, root);
        var plan = MemoryPlanner.Plan(PlanModel.FromConfig(config, caseName), new PlanSettings
        {
            Components = root, Precision = PlanPrecision.Fp32, ActivationDtypeBytes = 4,
            BaseDtypeBytes = training.BaseDtype == "bfloat16" ? 2 : 4,
            BatchSize = batch, SeqLen = seqLen, ActivationCheckpointing = training.ActivationCheckpointing,
        }, new CatalogComponents(catalog));

        using var model = load();
        torch.manual_seed(11);
        var composed = PeftComposer.Compose(catalog, model, root, training.ToOptimizerSettings());
        using var optimizer = composed.Optimizer;
        model.train();
        var ids = torch.randint(0, config.VocabSize, [batch, seqLen], dtype: ScalarType.Int64);
        long activations = 0, gradients = 0;
        var context = new Abstractions.Training.TrainingContext
        {
            Model = model, Optimizer = optimizer, TrainableParameters = composed.TrainableParameters, TotalSteps = 2, Seed = 5,
        };
        foreach (var hook in composed.Hooks) hook.OnTrainingStart(context);
        for (int step = 0; step < 2; step++)
        {
            context.Step = step;
            foreach (var hook in composed.Hooks) hook.OnStepStart(context);
            using var scope = torch.NewDisposeScope();
            long before = ProcessMemory.HeapInUse()!.Value;
            var logits = model.Logits(ids);                                 // as Trainer.ForwardBackward
            var loss = CausalLmLoss.Sum(logits, ids) / (batch * (seqLen - 1));
            activations = ProcessMemory.HeapInUse()!.Value - before;
            loss.backward();
            var seen = new HashSet<IntPtr>();
            gradients = composed.TrainableParameters.Where(p => seen.Add(p.Parameter.Handle) && p.Parameter.grad is not null)
                .Sum(p => p.Parameter.grad!.NumberOfElements * p.Parameter.grad!.ElementSize);
            optimizer.Step(1e-3);
            optimizer.ZeroGrad();
            foreach (var hook in composed.Hooks) hook.OnStepEnd(context);
        }
        var held = TrainingSummary.Measure(model, composed.TrainableParameters, optimizer);

        output.WriteLine($"{caseName}: planned activations {plan.Bytes.ActivationBytes:N0} B, measured {activations:N0} B " +
                         $"({100.0 * (activations - plan.Bytes.ActivationBytes) / plan.Bytes.ActivationBytes:+0.0;-0.0}%)");
        held.TrainableParameters.Should().Be(plan.TrainableParameters);
        if (plan.Bytes.QuantizationStatisticsBytes == 0)
        {
            held.TotalParameters.Should().Be(plan.TotalParameters + plan.AddedParameters);
            held.WeightBytes.Should().Be(plan.Bytes.BaseWeightBytes + plan.Bytes.TrainableWeightBytes);
        }
        // else: TrainingSummary counts parameters only, not a quantizer's code and statistics buffers, so the
        // quantized base's bytes are not measured here yet (trainable, gradient, state and activations still are)
        gradients.Should().Be(plan.Bytes.GradientBytes);
        // an optimizer's StateBytes covers everything it holds: GaLore's projectors are part of it
        held.OptimizerStateBytes.Should().Be(plan.Bytes.OptimizerStateBytes + plan.Bytes.ProjectionBytes);
        if (ProcessMemory.HeapInUse() is not null)
            ((double)activations).Should().BeApproximately(plan.Bytes.ActivationBytes, ActivationTolerance * plan.Bytes.ActivationBytes);
    }
}
