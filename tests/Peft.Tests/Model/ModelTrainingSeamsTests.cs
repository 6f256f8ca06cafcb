using Peft.Abstractions.Model;
using Peft.Host.Model;
using Peft.Host.Training;
using Peft.Tests.Import;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// The trainer's seams on the real model: frozen weights stored in bf16 (<see cref="IBaseWeightsCaster"/>) and
/// decoder layers recomputed in backward (<see cref="IActivationCheckpointing"/>), on stories260K.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class ModelTrainingSeamsTests(Stories260KFixture fx)
{
    static readonly string[] LoraSlots = ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.4.self_attn.v_proj"];

    /// <summary>A fresh copy of stories260K (the fixture's model is shared; these tests change theirs).</summary>
    LlamaForCausalLM Load() => HfModelFolder.Load(fx.ModelDir);

    /// <summary>Two TinyStories-like sentences as ids (2, T) with BOS, cut to the same length.</summary>
    Tensor SampleIds()
    {
        var a = fx.Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", addBos: true);
        var b = fx.Tokenizer.Encode("Tom had a big red ball. One day he threw it high and it landed in a tree. He was sad.", addBos: true);
        int t = Math.Min(a.Count, b.Count);
        return torch.tensor(a.Take(t).Concat(b.Take(t)).Select(i => (long)i).ToArray()).reshape(2, t);
    }

    /// <summary>Mean next-token loss of the model on ids (the trainer's loss: summed cross entropy / counted tokens).</summary>
    static Tensor MeanLoss(LlamaForCausalLM model, Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var sum = CausalLmLoss.Sum(model.Logits(ids), ids);
        return (sum / (ids.shape[0] * (ids.shape[1] - 1))).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Freeze the model and wrap <see cref="LoraSlots"/> in LoRA-shaped layers whose factors are trainable
    /// (seeded, with B non-zero so that both A and B receive gradients). Returns the trainable parameters by name.
    /// </summary>
    static Dictionary<string, Parameter> AttachLora(LlamaForCausalLM model, long seed = 11)
    {
        foreach (var (_, p) in model.NamedParameters()) p.requires_grad_(false);
        torch.manual_seed(seed);
        foreach (var slot in LoraSlots)
        {
            var wrapper = new TestLoraWrapper(model.GetLinear(slot), rank: 4);
            using (torch.no_grad()) wrapper.B.normal_(0, 0.05);
            model.SetLinear(slot, wrapper);
        }
        return model.NamedParameters().Where(p => p.Parameter.requires_grad).ToDictionary(p => p.Name, p => p.Parameter);
    }

    static long Bytes(IEnumerable<Tensor> tensors) => tensors.Sum(t => t.NumberOfElements * t.ElementSize);

    static float MaxAbs(Tensor t) { using var a = t.abs().max(); return a.item<float>(); }

    static float MaxAbsDiff(Tensor a, Tensor b) { using var d = (a - b).abs().max(); return d.item<float>(); }

    // ---------------------------------------------------------------- IBaseWeightsCaster

    [Fact]
    public void Casting_stores_frozen_weights_in_bf16_keeps_trainable_ones_and_matches_a_bf16_loaded_model()
    {
        using var ids = SampleIds();
        using var model = Load();
        model.eval();
        var trainable = AttachLora(model);
        trainable.Keys.Should().BeEquivalentTo(LoraSlots.SelectMany(s => new[] { $"{s}.lora_A.weight", $"{s}.lora_B.weight" }));
        var before = model.NamedParameters().ToList();
        var handles = trainable.ToDictionary(p => p.Key, p => p.Value.Handle);
        long frozenBytesBefore = Bytes(before.Where(p => !trainable.ContainsKey(p.Name)).Select(p => (Tensor)p.Parameter));
        using var fp32Logits = model.Logits(ids);

        model.CastFrozenWeights(ScalarType.BFloat16, trainable.ContainsKey);

        var after = model.NamedParameters().ToList();
        after.Select(p => p.Name).Should().Equal(before.Select(p => p.Name), "names and order are unchanged");
        after.Should().Contain(p => p.Name == "model.layers.0.self_attn.q_proj.base_layer.weight", "a wrapped linear is cast through its base_layer");
        foreach (var (name, p) in after)
        {
            if (trainable.TryGetValue(name, out var held))
            {
                p.Should().BeSameAs(held, $"{name} is trainable: the optimizer holds that object");
                p.Handle.Should().Be(handles[name], $"{name} keeps its storage");
                p.dtype.Should().Be(ScalarType.Float32, name);
                p.requires_grad.Should().BeTrue(name);
            }
            else
            {
                p.dtype.Should().Be(ScalarType.BFloat16, name);
                p.requires_grad.Should().BeFalse(name);
            }
        }
        long frozenBytesAfter = Bytes(after.Where(p => !trainable.ContainsKey(p.Name)).Select(p => (Tensor)p.Parameter));
        frozenBytesAfter.Should().Be(frozenBytesBefore / 2, "bf16 takes 2 bytes where fp32 takes 4");
        model.EmbeddingWeight.dtype.Should().Be(ScalarType.BFloat16, "the tied head's embedding is frozen too");

        // Compute stays fp32 on the rounded weights: the logits are those of the same model loaded in bf16 storage
        // (the loader rounds fp32 -> bf16 the same way), and within bf16 precision of the fp32 model.
        using var castLogits = model.Logits(ids);
        castLogits.dtype.Should().Be(ScalarType.Float32);
        using var reference = HfModelFolder.Load(fx.ModelDir, ScalarType.BFloat16);
        reference.eval();
        AttachLora(reference);
        foreach (var (name, p) in reference.NamedParameters().Where(p => trainable.ContainsKey(p.Name)))
            TensorAssert.Same(p, trainable[name]).Should().BeTrue($"{name}: same seeded factors in both models");
        using var bf16Logits = reference.Logits(ids);
        MaxAbsDiff(castLogits, bf16Logits).Should().BeLessThan(1e-5f);
        float scale = MaxAbs(fp32Logits), diff = MaxAbsDiff(castLogits, fp32Logits);
        diff.Should().BeLessThan(2e-2f * scale, "bf16 keeps about 3 significant digits");
        diff.Should().BeGreaterThan(0, "the weights really were rounded");
    }

    [Fact]
    public void A_training_step_on_a_cast_model_gives_finite_fp32_gradients_close_to_the_fp32_ones()
    {
        using var ids = SampleIds();
        Dictionary<string, float[]> Gradients(bool cast, out double loss)
        {
            using var model = Load();
            model.train();
            var trainable = AttachLora(model);
            if (cast) model.CastFrozenWeights(ScalarType.BFloat16, trainable.ContainsKey);
            using (var l = MeanLoss(model, ids)) { l.backward(); loss = l.item<float>(); }
            foreach (var (name, p) in model.NamedParameters().Where(p => !trainable.ContainsKey(p.Name)))
                p.grad.Should().BeNull($"{name} is frozen");
            var grads = new Dictionary<string, float[]>();
            foreach (var (name, p) in trainable)
            {
                p.grad!.dtype.Should().Be(ScalarType.Float32, name);
                grads[name] = p.grad.data<float>().ToArray();
            }
            // A plain SGD step moves the factors and lowers the loss on this batch.
            using (torch.no_grad()) foreach (var p in trainable.Values) p.add_(p.grad!, alpha: -0.5);
            using (torch.no_grad()) using (var l2 = MeanLoss(model, ids)) l2.item<float>().Should().BeLessThan((float)loss);
            return grads;
        }

        var plain = Gradients(cast: false, out var plainLoss);
        var cast = Gradients(cast: true, out var castLoss);
        castLoss.Should().BeApproximately(plainLoss, 1e-2 * plainLoss);
        foreach (var (name, g) in cast)
        {
            g.Should().OnlyContain(v => float.IsFinite(v), name);
            g.Should().Contain(v => v != 0, $"{name} receives a gradient");
            double scale = plain[name].Max(Math.Abs);
            g.Zip(plain[name], (a, b) => Math.Abs(a - b)).Max().Should().BeLessThan((float)(5e-2 * scale), name);
        }
    }

    [Fact]
    public void Casting_respects_trainable_names_and_requires_grad_and_an_untied_head_is_cast()
    {
        using var model = TinyLlama.Create(tied: false);
        var embedding = model.EmbeddingWeight;
        var finalNorm = model.NamedParameters().Single(p => p.Name == "model.norm.weight").Parameter;
        foreach (var (_, p) in model.NamedParameters()) p.requires_grad_(false);
        finalNorm.requires_grad_(true);   // not named trainable, but it requires grad: left alone
        using var ids = TinyLlama.RandomIds(1, 6);
        using var fp32Logits = model.Logits(ids);

        model.CastFrozenWeights(ScalarType.BFloat16, name => name == "model.embed_tokens.weight");

        var dtypes = model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter.dtype);
        dtypes["model.embed_tokens.weight"].Should().Be(ScalarType.Float32);
        model.EmbeddingWeight.Should().BeSameAs(embedding);
        dtypes["model.norm.weight"].Should().Be(ScalarType.Float32);
        model.NamedParameters().Single(p => p.Name == "model.norm.weight").Parameter.Should().BeSameAs(finalNorm);
        dtypes["lm_head.weight"].Should().Be(ScalarType.BFloat16);
        dtypes["model.layers.1.input_layernorm.weight"].Should().Be(ScalarType.BFloat16);
        dtypes["model.layers.1.mlp.gate_proj.weight"].Should().Be(ScalarType.BFloat16);
        ((BaseLinear)model.GetLinear("lm_head")).Weight.dtype.Should().Be(ScalarType.BFloat16, "the layer computes with the registered parameter");

        // Generation with a KV cache works on the cast weights and agrees with the uncached pass.
        using var castLogits = model.Logits(ids);
        MaxAbsDiff(castLogits, fp32Logits).Should().BeLessThan(2e-2f * MaxAbs(fp32Logits));
        using var cache = model.CreateKvCache();
        using var first = model.Forward(ids[.., ..4], cache);
        using var rest = model.Forward(ids[.., 4..], cache);
        using var cached = torch.cat([first, rest], 1);
        MaxAbsDiff(cached, castLogits).Should().BeLessThan(1e-5f);

        var act = () => model.CastFrozenWeights(ScalarType.Int32, _ => false);
        act.Should().Throw<ArgumentException>().WithMessage("*Int32*");
    }

    // ---------------------------------------------------------------- IActivationCheckpointing

    /// <summary>A linear slot that counts its forward calls (a recomputation runs it again).</summary>
    sealed class CountingLinear : nn.Module<Tensor, Tensor>, ILinearLayer
    {
#pragma warning disable IDE1006
        readonly nn.Module<Tensor, Tensor> inner;
#pragma warning restore IDE1006
        readonly ILinearLayer _inner;

        public CountingLinear(ILinearLayer wrapped) : base(nameof(CountingLinear))
        {
            _inner = wrapped;
            inner = wrapped.Module;
            RegisterComponents();
        }

        public int Calls { get; set; }
        public long InFeatures => _inner.InFeatures;
        public long OutFeatures => _inner.OutFeatures;
        public nn.Module<Tensor, Tensor> Module => this;
        public Tensor? Bias => _inner.Bias;
        public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32) => _inner.DenseWeight(dtype);
        public bool CanSetWeight => false;
        public void SetDenseWeight(Tensor weight) => throw new NotSupportedException();

        public override Tensor forward(Tensor x)
        {
            Calls++;
            return inner.call(x);
        }
    }

    /// <summary>Loss and the gradient of every parameter that requires grad, after one backward pass.</summary>
    static (float Loss, Dictionary<string, float[]> Grads) LossAndGradients(LlamaForCausalLM model, Tensor ids)
    {
        foreach (var (_, p) in model.NamedParameters()) p.grad = null;
        using var loss = MeanLoss(model, ids);
        loss.backward();
        var grads = model.NamedParameters().Where(p => p.Parameter.requires_grad)
            .ToDictionary(p => p.Name, p => p.Parameter.grad!.data<float>().ToArray());
        return (loss.item<float>(), grads);
    }

    [Theory]
    [InlineData(false)]   // every parameter trainable: the first layer's input requires grad (the embedding does)
    [InlineData(true)]    // LoRA-like: frozen base, so no layer input requires grad; only the factors do
    public void Checkpointed_layers_give_the_same_loss_and_gradients(bool lora)
    {
        using var ids = SampleIds();
        using var model = Load();
        model.train();
        if (lora) AttachLora(model);
        var counter = new CountingLinear(model.GetLinear("model.layers.3.mlp.up_proj"));
        model.SetLinear("model.layers.3.mlp.up_proj", counter);

        model.ActivationCheckpointing.Should().BeFalse("off by default");
        var (plainLoss, plainGrads) = LossAndGradients(model, ids);
        counter.Calls.Should().Be(1);

        model.ActivationCheckpointing = true;
        counter.Calls = 0;
        var (loss, grads) = LossAndGradients(model, ids);
        counter.Calls.Should().Be(2, "the layer runs once in forward and once more in backward");

        loss.Should().Be(plainLoss);
        grads.Keys.Should().BeEquivalentTo(plainGrads.Keys);
        grads.Count.Should().Be(lora ? 2 * LoraSlots.Length : model.NamedParameters().Count());
        foreach (var (name, g) in grads)
        {
            plainGrads[name].Should().Contain(v => v != 0, $"{name} receives a gradient");
            g.Zip(plainGrads[name], (a, b) => Math.Abs(a - b)).Max().Should().BeLessThan(1e-6f, name);
        }
    }

    [Fact]
    public void Checkpointing_applies_only_to_training_without_a_cache()
    {
        using var ids = SampleIds();
        using var model = Load();
        var counter = new CountingLinear(model.GetLinear("model.layers.1.self_attn.o_proj"));
        model.SetLinear("model.layers.1.self_attn.o_proj", counter);
        model.ActivationCheckpointing = true;
        model.train();
        using var trainLogits = model.Logits(ids);

        // Evaluation mode: a plain pass (and the same logits).
        model.eval();
        counter.Calls = 0;
        using (var loss = MeanLoss(model, ids)) loss.backward();
        counter.Calls.Should().Be(1, "eval mode runs the layers plainly");
        using var evalLogits = model.Logits(ids);
        MaxAbsDiff(evalLogits, trainLogits).Should().Be(0);

        // Training mode with a KV cache (generation): a plain pass that fills the cache.
        model.train();
        counter.Calls = 0;
        using var cache = model.CreateKvCache(batchSize: 2);
        using var cached = model.Forward(ids, cache);
        cache.Length.Should().Be(ids.shape[1]);
        using (var sum = cached.sum()) sum.backward();
        counter.Calls.Should().Be(1, "a cached pass is never checkpointed");
        MaxAbsDiff(cached, trainLogits).Should().BeLessThan(1e-5f);

        // No grad mode: nothing to recompute.
        counter.Calls = 0;
        using (torch.no_grad()) using (model.Logits(ids)) { }
        counter.Calls.Should().Be(1);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void Training_steps_leave_no_native_tensor_behind(bool checkpointing, bool castBase)
    {
        // Live TorchSharp tensors on this thread after each step: a forward, a backward, an SGD update and the gradients
        // cleared. The first steps warm up; from then on every step must free all it made (the recomputed graph included).
        using var ids = SampleIds();
        using var model = Load();
        model.train();
        var trainable = AttachLora(model);
        if (castBase) model.CastFrozenWeights(ScalarType.BFloat16, trainable.ContainsKey);
        model.ActivationCheckpointing = checkpointing;
        var live = new List<long>();
        var losses = new List<float>();
        for (int step = 0; step < 6; step++)
        {
            using (var scope = torch.NewDisposeScope())
            {
                var loss = MeanLoss(model, ids);
                loss.backward();
                losses.Add(loss.item<float>());
                using (torch.no_grad()) foreach (var p in trainable.Values) p.add_(p.grad!, alpha: -0.5);
                foreach (var p in trainable.Values) p.grad = null;
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        live.Skip(2).Should().AllBeEquivalentTo(live[2], $"live tensor counts per step were {string.Join(", ", live)}");
        losses[^1].Should().BeLessThan(losses[0], "the steps train the factors");
    }
}
