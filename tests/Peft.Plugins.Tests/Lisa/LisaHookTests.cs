using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Training;
using Peft.Host.Optimization;
using Peft.Plugins.Lisa;
using Peft.Plugins.Tests.Fakes;
using TorchSharp.Modules;

namespace Peft.Plugins.Tests.Lisa;

/// <summary>The fake model draws its weights from torch's global generator: run alone, so tests that check that generator's sequence are not perturbed.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class LisaSerialCollection
{
    public const string Name = "LISA (serial)";
}

[Collection(LisaSerialCollection.Name)]
public sealed class LisaHookTests
{
    static IConfigurationSection Entry(params (string Key, string Value)[] pairs)
    {
        var all = pairs.Select(p => new KeyValuePair<string, string?>("hooks:0:" + p.Key, p.Value)).Append(new("hooks:0:name", "lisa"));
        return new ConfigurationBuilder().AddInMemoryCollection(all).Build().GetSection("hooks:0");
    }

    static (LisaHook Hook, TrainingContext Context, FakeLlamaModel Model, AdamWOptimizer Optimizer) Start(int layers, int k, int interval, int seed = 11)
    {
        var model = FakeLlamaModel.Tiny(layers);
        var hook = (LisaHook)new LisaHookFactory().Create(Entry(("k", k.ToString()), ("interval", interval.ToString())));
        var trainable = model.NamedParameters().ToList();
        var declared = hook.DeclareTrainable(model, []);
        declared.Select(p => p.Name).Should().BeEquivalentTo(trainable.Select(p => p.Name), "under full fine-tuning LISA may switch every parameter");
        var optimizer = new AdamWOptimizer(trainable, new OptimizerSettings(1e-3, 0));
        var context = new TrainingContext { Model = model, Optimizer = optimizer, TrainableParameters = trainable, TotalSteps = 0, Seed = seed };
        hook.OnTrainingStart(context);
        return (hook, context, model, optimizer);
    }

    [Fact]
    public void Generator_matches_the_reference_xoshiro256starstar_and_splitmix64_outputs()
    {
        // xoshiro256** reference (prng.di.unimi.it) from state {1, 2, 3, 4}
        var x = LayerSampler.FromJson(new JsonArray("0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004"));
        new[] { x.NextUInt64(), x.NextUInt64(), x.NextUInt64(), x.NextUInt64() }.Should().Equal(11520UL, 0UL, 1509978240UL, 1215971899390074240UL);
        // seeding by SplitMix64: splitmix64(0) starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4
        var seeded = new LayerSampler(0).ToJson();
        seeded[0]!.GetValue<string>().Should().Be("e220a8397b1dcdaf");
        seeded[1]!.GetValue<string>().Should().Be("6e789e6aa1b965f4");
    }

    [Fact]
    public void Each_layer_is_chosen_with_frequency_k_over_L_and_each_pair_uniformly()
    {
        const int L = 8, k = 2, switches = 4000;
        var (hook, context, model, _) = Start(L, k, interval: 1);
        var count = new int[L];
        var pairs = new Dictionary<(int, int), int>();
        for (int s = 0; s < switches; s++)
        {
            context.Step = s;
            hook.OnStepStart(context);
            var active = hook.ActiveLayers!;
            active.Should().HaveCount(k).And.OnlyHaveUniqueItems().And.OnlyContain(l => l >= 0 && l < L);
            foreach (var l in active) count[l]++;
            pairs[(active[0], active[1])] = pairs.GetValueOrDefault((active[0], active[1])) + 1;
        }
        // Each layer's count is Binomial(N, p = k/L): mean N·k/L, sd sqrt(N·p·(1−p)) = 27.4 here. A correct sampler
        // stays within 4.5 sd for all 8 layers with probability > 0.9999; a sampler biased by 1/L in p breaks it.
        double p = (double)k / L, sd = Math.Sqrt(switches * p * (1 - p));
        foreach (var c in count) ((double)c).Should().BeApproximately(switches * p, 4.5 * sd, $"counts were {string.Join(", ", count)}");
        // Each of the C(8,2) = 28 pairs is Binomial(N, 1/28): mean 142.9, sd 11.7.
        pairs.Should().HaveCount(28);
        double q = 1.0 / 28, sdPair = Math.Sqrt(switches * q * (1 - q));
        foreach (var (_, c) in pairs) ((double)c).Should().BeApproximately(switches * q, 4.5 * sdPair);
        hook.Intervals.Should().HaveCount(switches);
    }

    [Fact]
    public void Only_the_sampled_layers_and_the_always_trainable_parameters_require_grad()
    {
        var (hook, context, model, _) = Start(layers: 5, k: 2, interval: 3);
        // no method: no parameter outside the layers except the head
        hook.AlwaysTrainable.Select(p => p.Name).Should().Equal("lm_head.weight");
        for (int s = 0; s < 12; s++)
        {
            context.Step = s;
            hook.OnStepStart(context);
            hook.Intervals.Should().HaveCount(s / 3 + 1, "a new sample every 3 steps, the first at step 0");
            foreach (var (name, p) in model.NamedParameters())
            {
                var layer = model.LayerIndexOf(name);
                p.requires_grad.Should().Be(layer is null || hook.ActiveLayers!.Contains(layer.Value), name);
            }
        }
    }

    [Fact]
    public void State_round_trips_through_JSON_and_continues_the_same_draws()
    {
        var (a, ca, _, _) = Start(layers: 6, k: 2, interval: 1, seed: 3);
        for (int s = 0; s < 5; s++) { ca.Step = s; a.OnStepStart(ca); }
        var saved = JsonNode.Parse(a.SaveState()!.ToJsonString())!.AsObject();

        var (b, cb, _, _) = Start(layers: 6, k: 2, interval: 1, seed: 999);
        b.LoadState(saved);
        for (int s = 5; s < 40; s++)
        {
            ca.Step = cb.Step = s;
            a.OnStepStart(ca);
            b.OnStepStart(cb);
            b.ActiveLayers.Should().Equal(a.ActiveLayers);
        }
        b.Intervals.Select(i => (i.Step, string.Join(",", i.Layers))).Should().Equal(a.Intervals.Select(i => (i.Step, string.Join(",", i.Layers))));
    }

    [Fact]
    public void Bad_options_name_the_key_and_value()
    {
        var factory = new LisaHookFactory();
        factory.Invoking(f => f.Create(Entry(("k", "0")))).Should().Throw<PeftConfigurationException>().WithMessage("*'hooks:0:k' has value '0'*");
        factory.Invoking(f => f.Create(Entry(("interval", "x")))).Should().Throw<PeftConfigurationException>().WithMessage("*hooks:0:interval*x*");
        factory.Invoking(f => f.Create(Entry(("always_trainable", "everything")))).Should().Throw<PeftConfigurationException>().WithMessage("*hooks:0:always_trainable*everything*");
        factory.Invoking(f => f.Create(Entry(("layers", "2")))).Should().Throw<PeftConfigurationException>().WithMessage("*hooks:0:layers*unknown key*");
        var tooMany = factory.Create(Entry(("k", "4")));
        tooMany.Invoking(h => h.DeclareTrainable(FakeLlamaModel.Tiny(3), [])).Should().Throw<PeftConfigurationException>().WithMessage("*hooks:0:k*'4'*3 decoder layers*");
        var badName = factory.Create(Entry(("always_trainable:0", "lm_head.bias")));
        badName.Invoking(h => h.DeclareTrainable(FakeLlamaModel.Tiny(3), [])).Should().Throw<PeftConfigurationException>().WithMessage("*always_trainable*lm_head.bias*names no parameter*");

        var none = (LisaHook)factory.Create(Entry(("always_trainable", "none")));
        none.DeclareTrainable(FakeLlamaModel.Tiny(3), []);
        none.AlwaysTrainable.Should().BeEmpty();
        var defaults = (LisaHook)factory.Create(Entry());
        defaults.Options.K.Should().Be(2);
        defaults.Options.Interval.Should().Be(20);
    }
}
