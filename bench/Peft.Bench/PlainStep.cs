using System.Diagnostics;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Peft.Bench;

/// <summary>
/// The same-engine anchor (<c>plain-full</c>, <c>plain-lora</c>): the training step written by hand in TorchSharp as a
/// user would, with no part of this framework — its own Llama modules (stories15M's shape, tied head), LoRA r=16,
/// alpha=32 on q,k,v,o as a small wrapper of a frozen <c>nn.Linear</c>, the full (B·T, V) logits into
/// <c>cross_entropy</c>, <c>clip_grad_norm_</c> and <c>torch.optim.AdamW</c>. Timed and measured like
/// <see cref="ChildRun"/>, so the framework's overhead (or gain) shows as a ratio in every run.
/// </summary>
public static class PlainStep
{
    public static Measurement Measure(Variant variant, BenchOptions o)
    {
        torch.set_num_threads(o.Threads);
        bool lora = variant.Name == "plain-lora";
        var shape = Workload.Stories15MShape();
        torch.manual_seed(o.Seed);
        var model = new PlainLlama(shape.VocabSize, shape.HiddenSize, shape.IntermediateSize, shape.NumHiddenLayers, shape.NumAttentionHeads, shape.RmsNormEps,
            loraR: lora ? 16 : 0);
        if (lora)
            foreach (var (name, p) in model.named_parameters()) p.requires_grad_(name.Contains(".lora_"));
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        var optimizer = torch.optim.AdamW(trainable, lr: 1e-4, weight_decay: 0);
        var data = Workload.RandomTokens(o.BatchSize * (o.WarmupSteps + o.Steps), o.SeqLen, shape.VocabSize, o.Seed);

        long rssBefore = ProcessMemory.CurrentRssBytes();
        var steps = new List<double>();
        double firstLoss = 0, lastLoss = 0;
        model.train();
        for (int step = 0; step < o.WarmupSteps + o.Steps; step++)
        {
            var clock = Stopwatch.StartNew();
            using (var scope = torch.NewDisposeScope())
            {
                var rows = data.Train.Skip(step * o.BatchSize).Take(o.BatchSize).SelectMany(e => e.InputIds.Select(i => (long)i)).ToArray();
                var ids = torch.tensor(rows, [o.BatchSize, o.SeqLen]);
                var logits = model.call(ids);                                         // (B, T, V)
                var loss = functional.cross_entropy(
                    logits[.., ..^1].reshape(-1, shape.VocabSize), ids[.., 1..].reshape(-1));
                optimizer.zero_grad();
                loss.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
                lastLoss = loss.item<float>();
                if (step == 0) firstLoss = lastLoss;
            }
            steps.Add(clock.Elapsed.TotalSeconds);
        }
        long peak = ProcessMemory.PeakRssBytes();
        var timed = steps.Skip(o.WarmupSteps).ToList();
        long total = model.parameters().Sum(p => p.numel());
        long train = trainable.Sum(p => p.numel());
        return new Measurement
        {
            Variant = variant.Name,
            Threads = torch.get_num_threads(),
            BatchSize = o.BatchSize, SeqLen = o.SeqLen, WarmupSteps = o.WarmupSteps, TimedSteps = o.Steps,
            TimedSeconds = timed.Sum(),
            TokensPerSecond = (double)o.BatchSize * o.SeqLen * o.Steps / timed.Sum(),
            MedianStepSeconds = Report.Median(timed),
            StepSeconds = steps.Select(s => Math.Round(s, 3)).ToList(),
            RssBeforeTrainingBytes = rssBefore,
            PeakRssBytes = peak,
            TotalParameters = total,
            TrainableParameters = train,
            WeightBytes = total * 4,
            GradientBytes = train * 4,
            OptimizerStateBytes = train * 8,
            FirstLoss = firstLoss,
            LastLoss = lastLoss,
        };
    }

    sealed class RmsNorm : Module<Tensor, Tensor>
    {
        readonly Parameter weight;
        readonly double eps;
        public RmsNorm(long dim, double eps) : base(nameof(RmsNorm)) { weight = new Parameter(torch.ones(dim)); this.eps = eps; RegisterComponents(); }
        public override Tensor forward(Tensor x) => x * torch.rsqrt(x.pow(2).mean([-1], keepdim: true) + eps) * weight;
    }

    /// <summary>y = x W^T + (alpha/r) · x A^T B^T with W frozen.</summary>
    sealed class LoraLinear : Module<Tensor, Tensor>
    {
        readonly Linear base_layer;
        readonly Parameter lora_A, lora_B;
        readonly double scale;
        public LoraLinear(Linear baseLayer, int r, int alpha) : base(nameof(LoraLinear))
        {
            base_layer = baseLayer;
            long inF = baseLayer.weight!.shape[1], outF = baseLayer.weight!.shape[0];
            lora_A = new Parameter(torch.empty(r, inF));
            init.kaiming_uniform_(lora_A, Math.Sqrt(5));
            lora_B = new Parameter(torch.zeros(outF, r));
            scale = (double)alpha / r;
            RegisterComponents();
        }
        public override Tensor forward(Tensor x) => base_layer.call(x) + functional.linear(functional.linear(x, lora_A), lora_B) * scale;
    }

    sealed class Block : Module<Tensor, Tensor, Tensor, Tensor>
    {
        readonly int heads;
        readonly Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
        readonly Linear gate_proj, up_proj, down_proj;
        readonly RmsNorm input_layernorm, post_attention_layernorm;

        public Block(long dim, long hidden, int heads, double eps, int loraR) : base(nameof(Block))
        {
            this.heads = heads;
            Module<Tensor, Tensor> Attn() => loraR > 0 ? new LoraLinear(Linear(dim, dim, hasBias: false), loraR, 2 * loraR) : Linear(dim, dim, hasBias: false);
            q_proj = Attn(); k_proj = Attn(); v_proj = Attn(); o_proj = Attn();
            gate_proj = Linear(dim, hidden, hasBias: false); up_proj = Linear(dim, hidden, hasBias: false); down_proj = Linear(hidden, dim, hasBias: false);
            input_layernorm = new RmsNorm(dim, eps); post_attention_layernorm = new RmsNorm(dim, eps);
            RegisterComponents();
        }

        static Tensor RotateHalf(Tensor x)
        {
            long half = x.shape[^1] / 2;
            return torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        }

        public override Tensor forward(Tensor x, Tensor cos, Tensor sin)
        {
            long b = x.shape[0], t = x.shape[1], d = x.shape[2], hd = d / heads;
            var h = input_layernorm.call(x);
            var q = q_proj.call(h).view(b, t, heads, hd).transpose(1, 2);
            var k = k_proj.call(h).view(b, t, heads, hd).transpose(1, 2);
            var v = v_proj.call(h).view(b, t, heads, hd).transpose(1, 2);
            q = q * cos + RotateHalf(q) * sin;
            k = k * cos + RotateHalf(k) * sin;
            var a = functional.scaled_dot_product_attention(q, k, v, is_casual: true).transpose(1, 2).reshape(b, t, d);
            x = x + o_proj.call(a);
            h = post_attention_layernorm.call(x);
            return x + down_proj.call(functional.silu(gate_proj.call(h)) * up_proj.call(h));
        }
    }

    sealed class PlainLlama : Module<Tensor, Tensor>
    {
        readonly Embedding embed_tokens;
        readonly ModuleList<Block> layers;
        readonly RmsNorm norm;
        readonly long headDim;

        public PlainLlama(long vocab, long dim, long hidden, int layerCount, int heads, double eps, int loraR) : base(nameof(PlainLlama))
        {
            embed_tokens = Embedding(vocab, dim);
            layers = new ModuleList<Block>(Enumerable.Range(0, layerCount).Select(_ => new Block(dim, hidden, heads, eps, loraR)).ToArray());
            norm = new RmsNorm(dim, eps);
            headDim = dim / heads;
            RegisterComponents();
            using var noGrad = torch.no_grad();
            foreach (var (name, p) in named_parameters())
                if (!name.EndsWith("norm.weight", StringComparison.Ordinal) && !name.Contains(".lora_")) p.normal_(0, 0.02);
        }

        public override Tensor forward(Tensor ids)
        {
            long t = ids.shape[1];
            var inv = torch.pow(10000.0, -torch.arange(0, headDim, 2, ScalarType.Float32) / headDim);   // (hd/2)
            var freqs = torch.outer(torch.arange(t, ScalarType.Float32), inv);                          // (T, hd/2)
            var emb = torch.cat([freqs, freqs], -1);                                                    // (T, hd)
            var cos = emb.cos(); var sin = emb.sin();
            var x = embed_tokens.call(ids);
            foreach (var layer in layers) x = layer.call(x, cos, sin);
            return functional.linear(norm.call(x), embed_tokens.weight!);                              // tied head
        }
    }
}
