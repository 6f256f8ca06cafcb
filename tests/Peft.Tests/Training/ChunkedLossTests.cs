using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Training;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Training;

/// <summary>
/// The chunked linear + cross-entropy (<see cref="ChunkedLinearCrossEntropy"/>) against the plain path
/// (full logits, <c>cross_entropy</c>): same summed loss and same gradients of every trainable parameter.
/// </summary>
public sealed class ChunkedLossTests
{
    static LlamaForCausalLM Model(bool tied, ulong seed = 11)
    {
        torch.manual_seed((long)seed);
        return new LlamaForCausalLM(new LlamaConfig
        {
            HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            VocabSize = 97, MaxPositionEmbeddings = 64, TieWordEmbeddings = tied, InitializerRange = 0.2,
        });
    }

    /// <summary>Two micro-batches (ids, labels with −100 at random positions and a padded tail), fixed by a seed.</summary>
    static List<(Tensor Ids, Tensor Labels)> Batches()
    {
        var g = new Generator(5);
        var result = new List<(Tensor, Tensor)>();
        foreach (var (b, t) in new[] { (3, 17), (2, 23) })
        {
            var ids = torch.randint(0, 97, [b, t], generator: g, dtype: ScalarType.Int64);
            var labels = ids.clone();
            var drop = torch.rand([b, t], generator: g).lt(0.3);
            labels.masked_fill_(drop, CausalLmLoss.IgnoreIndex);
            labels[0, TensorIndex.Slice(t - 4)] = torch.tensor(CausalLmLoss.IgnoreIndex);   // a padded tail
            result.Add((ids, labels));
        }
        return result;
    }

    /// <summary>Σ loss and the accumulated gradients (step-token-weighted, as the trainer does) of <paramref name="trainable"/>.</summary>
    static (double Loss, Dictionary<string, float[]> Grads) Step(LlamaForCausalLM model, Func<string, bool> trainable, int chunk)
    {
        foreach (var (name, p) in model.NamedParameters()) { p.requires_grad_(trainable(name)); p.grad = null; }
        var batches = Batches();
        long tokens = batches.Sum(b => (long)b.Labels[.., 1..].ne(CausalLmLoss.IgnoreIndex).sum().item<long>());
        double loss = 0;
        foreach (var (ids, labels) in batches)
        {
            using var scope = torch.NewDisposeScope();
            var sum = CausalLmLoss.Sum(model, ids, labels, chunk);
            (sum / tokens).backward();
            loss += sum.item<float>();
        }
        var grads = model.NamedParameters().Where(p => p.Parameter.grad is not null)
            .ToDictionary(p => p.Name, p => p.Parameter.grad!.data<float>().ToArray());
        return (loss, grads);
    }

    static void ShouldMatch((double Loss, Dictionary<string, float[]> Grads) chunked, (double Loss, Dictionary<string, float[]> Grads) plain)
    {
        chunked.Loss.Should().BeApproximately(plain.Loss, 1e-5 * Math.Abs(plain.Loss));
        chunked.Grads.Keys.Should().BeEquivalentTo(plain.Grads.Keys);
        foreach (var (name, g) in plain.Grads)
        {
            g.Should().Contain(v => v != 0, $"{name} receives a gradient");
            g.Zip(chunked.Grads[name], (a, b) => Math.Abs(a - b)).Max().Should().BeLessThan(1e-5f, name);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(4096)]
    public void A_trainable_untied_head_gets_the_plain_loss_and_gradients(int chunk)
    {
        using var model = Model(tied: false);
        var plain = Step(model, _ => true, 0);
        plain.Grads.Should().ContainKey("lm_head.weight");
        ShouldMatch(Step(model, _ => true, chunk), plain);
    }

    [Fact]
    public void A_frozen_tied_head_gets_no_gradient_and_the_layers_get_the_plain_ones()
    {
        using var model = Model(tied: true);
        Func<string, bool> layersOnly = n => n.Contains(".layers.");
        var plain = Step(model, layersOnly, 0);
        var chunked = Step(model, layersOnly, 5);
        chunked.Grads.Keys.Should().NotContain("model.embed_tokens.weight");
        ShouldMatch(chunked, plain);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_frozen_bf16_head_is_read_block_by_block_and_gives_the_fp32_loss_and_gradients(bool tied)
    {
        // Reference: fp32 storage holding bf16 values (what loading a bf16 folder in fp32 gives). Under test: the same
        // values stored in bf16, every weight frozen but the norms, so the head (tied embedding or lm_head) is a frozen
        // bf16 W that the chunked loss reads in blocks of 5 rows x 32 and the decoder's frozen bf16 linears go through
        // the up-cast-again-in-backward function. Loss and the norms' gradients equal the fp32 ones.
        Func<string, bool> norms = n => n.EndsWith("norm.weight", StringComparison.Ordinal);
        using var reference = Model(tied);
        using (torch.no_grad())
            foreach (var (_, p) in reference.NamedParameters()) p.copy_(p.to(ScalarType.BFloat16));
        using var stored = Model(tied);
        using (torch.no_grad())
            foreach (var (name, p) in stored.NamedParameters()) { p.copy_(p.to(ScalarType.BFloat16)); p.requires_grad_(norms(name)); }
        stored.CastFrozenWeights(ScalarType.BFloat16, norms);
        stored.EmbeddingWeight.dtype.Should().Be(ScalarType.BFloat16);
        if (!tied) stored.NamedParameters().Single(p => p.Name == "lm_head.weight").Parameter.dtype.Should().Be(ScalarType.BFloat16);

        var plain = Step(reference, norms, 0);
        ChunkedLinearCrossEntropy.TestUpcastBlockWeights = 5 * 32;
        try
        {
            ShouldMatch(Step(stored, norms, 7), plain);
            ShouldMatch(Step(stored, norms, 0), plain);   // the full-logits path: the head's frozen bf16 W through UpcastLinear
        }
        finally { ChunkedLinearCrossEntropy.TestUpcastBlockWeights = 0; }
    }

    [Fact]
    public void A_trainable_tied_head_sums_the_head_and_the_embedding_gradients()
    {
        using var model = Model(tied: true);
        var plain = Step(model, _ => true, 0);
        ShouldMatch(Step(model, _ => true, 6), plain);
    }

    [Fact]
    public void Only_the_head_training_needs_no_hidden_gradient()
    {
        using var model = Model(tied: false);
        ShouldMatch(Step(model, n => n == "lm_head.weight", 9), Step(model, n => n == "lm_head.weight", 0));
    }

    [Fact]
    public void Without_grad_the_chunked_loss_is_the_plain_loss()
    {
        using var model = Model(tied: true);
        using var noGrad = torch.no_grad();
        foreach (var (ids, labels) in Batches())
        {
            using var scope = torch.NewDisposeScope();
            double plain = CausalLmLoss.Sum(model.Logits(ids), labels).item<float>();
            CausalLmLoss.Sum(model, ids, labels, 3).item<float>().Should().BeApproximately((float)plain, (float)(1e-5 * plain));
        }
    }

    [Fact]
    public void The_chunked_loss_is_the_hand_computed_cross_entropy()
    {
        // h (2, 2), W (3, 2): z = h W^T; L = Σ logsumexp(z_i) − z_i[y_i]; ∂L/∂h = (softmax(z) − onehot(y)) W
        using var h = torch.tensor(new float[] { 1, 2, -1, 0.5f }, [2, 2]).requires_grad_(true);
        using var w = torch.tensor(new float[] { 0.1f, 0.2f, -0.3f, 0.4f, 0.5f, -0.6f }, [3, 2]).requires_grad_(true);
        using var y = torch.tensor(new long[] { 2, 0 });
        var loss = ChunkedLinearCrossEntropy.Dense(h, w, y, 1);
        double[][] z = [[0.1 + 0.4, -0.3 + 0.8, 0.5 - 1.2], [-0.1 + 0.1, 0.3 + 0.2, -0.5 - 0.3]];
        double Lse(double[] r) => Math.Log(r.Sum(Math.Exp));
        double expected = Lse(z[0]) - z[0][2] + Lse(z[1]) - z[1][0];
        loss.item<float>().Should().BeApproximately((float)expected, 1e-6f);
        loss.backward();
        double[] p0 = z[0].Select(v => Math.Exp(v - Lse(z[0]))).ToArray();
        p0[2] -= 1;
        double dh00 = p0[0] * 0.1 + p0[1] * -0.3 + p0[2] * 0.5;
        h.grad!.data<float>()[0].Should().BeApproximately((float)dh00, 1e-6f);
        double dw20 = p0[2] * 1 + (Math.Exp(z[1][2] - Lse(z[1]))) * -1;    // ∂L/∂W[2,0] = Σ_i g_i[2] h_i[0]
        w.grad!.data<float>()[4].Should().BeApproximately((float)dw20, 1e-6f);
        loss.Dispose();
    }
}

/// <summary>The trainer on stories260K with the chunked loss and with the full logits: the same losses.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class ChunkedLossTrainingTests(Stories260KFixture fx)
{
    sealed class LiveTensorProbe : ITrainingHook
    {
        public List<long> Live { get; } = new();
        public void OnStepEnd(TrainingContext context) => Live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    (List<double> Losses, List<double> Evals, List<long> Live) Train(int chunk, params (string Key, string Value)[] method)
    {
        using var model = HfModelFolder.Load(fx.ModelDir);
        using var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build());
        var root = new ConfigurationBuilder().AddInMemoryCollection(method.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();
        var training = new TrainingOptions
        {
            Seed = 3, BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 6, LearningRate = 2e-3, LrScheduler = "constant",
            LogEvery = 100, CheckpointEvery = 0, EvalEvery = 3, EvalBatches = 2, LossChunkTokens = chunk,
        };
        torch.manual_seed(training.Seed);
        var composed = PeftComposer.Compose(catalog, model, root, training.ToOptimizerSettings());
        var data = TrainingDataSet.Load(new DataOptions
        {
            Path = TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl"),
            Format = "instruction", SeqLen = 128, ValidationFraction = 0.1, MaxRows = 120,
        }, fx.Tokenizer, training.Seed);
        var probe = new LiveTensorProbe();
        TrainingResult result;
        using (composed.Optimizer)
            result = Trainer.Run(new TrainingRun
            {
                Model = model, TrainableParameters = composed.TrainableParameters, Optimizer = composed.Optimizer,
                Hooks = [probe], Data = data, Options = training, OutputDirectory = fx.NewDir("chunked"),
                Output = composed.Adapter is { } a ? new AdapterOutput(a, fx.ModelDir) : new FullModelOutput(model), WriteLossCurve = false,
            });
        return (result.Steps.Select(s => s.Loss).ToList(), result.Evaluations.Select(e => e.Loss).ToList(), probe.Live);
    }

    static void SameLosses(List<double> a, List<double> b)
    {
        a.Should().HaveCount(b.Count);
        for (int i = 0; i < a.Count; i++) a[i].Should().BeApproximately(b[i], 1e-5, $"loss {i}");
    }

    public static TheoryData<string> Methods => new() { "lora", "lora+head", "full" };

    [Theory]
    [MemberData(nameof(Methods))]
    public void Chunked_and_plain_training_give_the_same_losses(string method)
    {
        (string, string)[] config = method switch
        {
            "lora" => [("method:name", "lora"), ("method:r", "4"), ("method:lora_alpha", "8"), ("method:target_modules:0", "q_proj"), ("method:target_modules:1", "down_proj")],
            // an adapter on the head: not one dense weight, so each chunk is checkpointed instead of fused
            "lora+head" => [("method:name", "lora"), ("method:r", "4"), ("method:lora_alpha", "8"), ("method:target_modules:0", "v_proj"), ("method:target_modules:1", "lm_head")],
            _ => [("method:name", "full")],
        };
        var chunked = Train(16, config);
        var plain = Train(0, config);
        SameLosses(chunked.Losses, plain.Losses);
        SameLosses(chunked.Evals, plain.Evals);
        chunked.Losses[^1].Should().BeLessThan(chunked.Losses[0]);
        chunked.Live.Skip(2).Should().AllBeEquivalentTo(chunked.Live[2], $"live tensors per step were {string.Join(", ", chunked.Live)}");
    }
}
