using Peft.Abstractions.Model;
using Peft.Host.Planning;
using static Peft.Tests.Planning.PlanTestKit;

namespace Peft.Tests.Planning;

/// <summary>The planner's arithmetic against hand-computed values (every expected number is worked out in the comment next to it).</summary>
public sealed class MemoryPlannerTests
{
    [Fact]
    public void Llama2_7B_has_its_published_parameter_count()
    {
        // embed 32000*4096 + head 32000*4096 + 32 * (4*4096^2 + 3*4096*11008 + 2*4096) + 4096 = 6,738,415,616 (Llama-2-7b-hf)
        Preset("llama2-7b").TotalParameters.Should().Be(6_738_415_616);
        // Llama-3 8B: 128256*4096*2 + 32 * (2*4096^2 + 2*4096*1024 + 3*4096*14336 + 2*4096) + 4096 = 8,030,261,248
        Preset("llama3-8b").TotalParameters.Should().Be(8_030_261_248);
    }

    [Fact]
    public void Lora_r16_on_q_v_of_llama2_7b_trains_8_388_608_parameters()
    {
        // 32 layers * 2 targets * r (in + out) = 32 * 2 * 16 * (4096 + 4096) = 8,388,608
        var p = Plan("llama2-7b", "lora", new MethodKnobs { Rank = 16 });
        p.TrainableParameters.Should().Be(8_388_608);
        // mixed precision: bf16 weights and gradients (2 B), fp32 master (4 B), fp32 m + v (8 B) + an 8-byte step counter per tensor (128 tensors)
        p.Bytes.TrainableWeightBytes.Should().Be(2 * 8_388_608L);
        p.Bytes.GradientBytes.Should().Be(2 * 8_388_608L);
        p.Bytes.MasterWeightBytes.Should().Be(4 * 8_388_608L);
        p.Bytes.OptimizerStateBytes.Should().Be(8 * 8_388_608L + 8 * 128);
        // frozen base in bf16: every parameter, 2 bytes
        p.Bytes.BaseWeightBytes.Should().Be(2 * 6_738_415_616L);
    }

    [Fact]
    public void Grouped_query_attention_makes_k_and_v_adapters_smaller_than_q()
    {
        var slots = Preset("llama3-8b").Slots;
        slots.First(s => s.ShortName == "q_proj").OutFeatures.Should().Be(4096);
        slots.First(s => s.ShortName == "k_proj").OutFeatures.Should().Be(1024); // 8 KV heads * 128
        slots.First(s => s.ShortName == "v_proj").OutFeatures.Should().Be(1024);
        // per layer: q, o 16*(4096+4096) = 131,072 each; k, v 16*(4096+1024) = 81,920 each -> 425,984; * 32 = 13,631,488
        Plan("llama3-8b", "lora", new MethodKnobs { Rank = 16, TargetModules = Attention }).TrainableParameters.Should().Be(13_631_488);
        // the seed's square-matrix count would be 4 * 32 * 2 * 4096 * 16 = 16,777,216
    }

    [Fact]
    public void Nf4_with_double_quantization_costs_4_127_bits_per_weight()
    {
        // one 4096 x 4096 weight, n = 16,777,216: codes n/2; 262,144 blocks of 64 -> 262,144 one-byte absmax codes,
        // 1,024 nested fp32 absmax (one per 256 blocks), one fp32 offset: n * (4 + 8/64 + 32/(64*256)) / 8 + 4 bytes
        var slot = new LinearSlot("w", "w", 0, LinearKind.AttentionQuery, 4096, 4096);
        var (codes, stats) = PlannerFormulas.QuantizedBytes("nf4", slot, Config(new()))!.Value;
        codes.Should().Be(8_388_608);
        stats.Should().Be(262_144 + 1_024 * 4 + 4);
        (codes + stats).Should().Be((long)(16_777_216 * 4.126953125 / 8) + 4);
        // without double quantization: one fp32 absmax per 64 weights, 4.5 bits
        var (c2, s2) = PlannerFormulas.QuantizedBytes("nf4", slot, Config(new() { ["double_quant"] = "false" }))!.Value;
        (c2 + s2).Should().Be(16_777_216L * 45 / 80);
    }

    [Fact]
    public void Qlora_on_llama2_70b_quantizes_every_linear_but_the_head()
    {
        var model = Preset("llama2-70b");
        long quantizedWeights = model.Slots.Where(s => s.Kind != LinearKind.OutputHead).Sum(s => s.Parameters);
        var p = Plan("llama2-70b", "qlora", new MethodKnobs { Rank = 16, TargetModules = Attention });
        // statistics: 0.127 bits per quantized weight (1.086 GB here; "about 1.11 GB" for a round 70e9, not the seed's 0.57 GB)
        ((double)p.Bytes.QuantizationStatisticsBytes).Should().BeApproximately(quantizedWeights * 0.126953125 / 8, 80 * 7 * 8.0 + 1e4);
        // base: 4-bit codes for the quantized linears + bf16 embeddings, norms and head
        long other = model.TotalParameters - quantizedWeights;
        p.Bytes.BaseWeightBytes.Should().Be(quantizedWeights / 2 + 2 * other);
    }

    [Fact]
    public void Full_fine_tuning_in_mixed_precision_is_16_bytes_per_parameter()
    {
        var p = Plan("llama2-7b", "full");
        long n = 6_738_415_616, tensors = 2 + 32 * 9 + 1; // embed, head, per layer 7 linears + 2 norms, final norm
        p.Bytes.TrainableWeightBytes.Should().Be(2 * n);
        p.Bytes.GradientBytes.Should().Be(2 * n);
        p.Bytes.MasterWeightBytes.Should().Be(4 * n);
        p.Bytes.OptimizerStateBytes.Should().Be(8 * n + 8 * tensors);
        p.Bytes.TotalBytes.Should().Be(16 * n + 8 * tensors);
    }

    [Fact]
    public void Galore_default_is_one_sided_with_r_by_max_state()
    {
        var model = Preset("llama2-7b");
        var p = Plan("llama2-7b", "galore", new MethodKnobs { GaloreRank = 128 });
        // per layer: q,k,v,o (4096x4096): state 2*128*4096*4, projector 128*4096*4;
        // gate, up (11008 out x 4096 in) and down (4096 x 11008): state 2*128*11008*4, projector 128*4096*4
        long attnState = 4 * 2 * 128 * 4096 * 4L, mlpState = 3 * 2 * 128 * 11008 * 4L;
        long projections = 32 * 7 * 128 * 4096 * 4L;
        long other = 2 * 32000 * 4096L + 32 * 2 * 4096 + 4096; // embed, head, norms: plain AdamW m + v in fp32
        long counters = 8L * (2 + 32 * 9 + 1);
        p.Bytes.OptimizerStateBytes.Should().Be(32 * (attnState + mlpState) + 2 * other * 4 + counters);
        p.Bytes.ProjectionBytes.Should().Be(projections);

        // two-sided (the seed's, official 'full'): r*r moments, (m + n)*r projectors
        var two = Plan("llama2-7b", "galore", new MethodKnobs { GaloreRank = 128, GaloreType = "full" });
        two.Bytes.OptimizerStateBytes.Should().Be(32 * 7 * 2 * 128 * 128 * 4L + 2 * other * 4 + counters);
        two.Bytes.ProjectionBytes.Should().Be(32 * (4 * 8192 + 3 * 15104) * 128 * 4L);

        // layer-wise: one gradient at a time, the largest tensor (the 32000 x 4096 embedding)
        var lw = Plan("llama2-7b", "galore", new MethodKnobs { GaloreLayerwise = true });
        lw.Bytes.GradientBytes.Should().Be(2 * 32000 * 4096L);
        model.TotalParameters.Should().Be(p.TrainableParameters);
    }

    [Fact]
    public void Lisa_holds_gradients_and_state_for_k_layers_plus_embeddings_head_and_norm()
    {
        var p = Plan("llama2-7b", "lisa", new MethodKnobs { LisaK = 2 });
        long layer = 4 * 4096 * 4096L + 3 * 4096 * 11008L + 2 * 4096;
        long always = 2 * 32000 * 4096L + 4096;
        p.ActiveTrainableParameters.Should().Be(2 * layer + always);
        p.Bytes.GradientBytes.Should().Be(2 * (2 * layer + always));
        p.Bytes.TrainableWeightBytes.Should().Be(2 * 6_738_415_616L); // every weight may train, all are held
    }

    [Fact]
    public void Lisa_plus_lora_trains_k_layers_weights_and_the_other_layers_adapters()
    {
        // the lisa plugin under LoRA: active layers train their own weights (adapters frozen), the other layers their
        // adapters, and embeddings, final norm and head throughout
        var p = Plan("llama2-7b", "lisa+lora", new MethodKnobs { Rank = 16, LisaK = 4 });
        long layer = 4 * 4096 * 4096L + 3 * 4096 * 11008L + 2 * 4096;   // 202,383,360
        long outside = 2 * 32000 * 4096L + 4096;                         // 262,148,096
        long adapterPerLayer = 8_388_608 / 32;                           // 262,144
        p.TrainableParameters.Should().Be(8_388_608 + 6_738_415_616);
        p.ActiveTrainableParameters.Should().Be(4 * layer + outside + 28 * adapterPerLayer);
        p.Bytes.GradientBytes.Should().Be(2 * (4 * layer + outside + 28 * adapterPerLayer));
    }

    [Fact]
    public void Zero_stages_shard_state_then_gradients_then_weights()
    {
        var p = Plan("llama2-7b", "full", change: s => s with { Gpus = 8 });
        var b = p.Bytes;
        static long Ceil(long x) => (x + 7) / 8;
        b.PerGpu(8, 0).TotalBytes.Should().Be(b.TotalBytes);
        b.PerGpu(8, 1).OptimizerStateBytes.Should().Be(Ceil(b.OptimizerStateBytes));
        b.PerGpu(8, 1).GradientBytes.Should().Be(b.GradientBytes);
        b.PerGpu(8, 2).GradientBytes.Should().Be(Ceil(b.GradientBytes));
        b.PerGpu(8, 2).TrainableWeightBytes.Should().Be(b.TrainableWeightBytes);
        b.PerGpu(8, 3).TrainableWeightBytes.Should().Be(Ceil(b.TrainableWeightBytes));
    }

    [Fact]
    public void Minimum_gpus_is_the_smallest_count_that_fits()
    {
        // llama2-7b full, mixed: 16 bytes * 6.74e9 = 107.8 GB (+ counters); ZeRO-3 on 24 GB: ceil(107.8/24) = 5
        var p = Plan("llama2-7b", "full", change: s => s with { GpuMemoryBytes = 24_000_000_000, ZeroStage = 3 });
        p.MinimumGpus(3).Should().Be(5);
        p.Bytes.PerGpu(4, 3).TotalBytes.Should().BeGreaterThan(24_000_000_000);
        p.Bytes.PerGpu(5, 3).TotalBytes.Should().BeLessThanOrEqualTo(24_000_000_000);
        p.MinimumGpus(0).Should().BeNull(); // replicas never shrink
        // ZeRO-1 floor: weights + gradients (4 bytes/param = 27 GB) never shard: no count fits 24 GB
        p.MinimumGpus(1).Should().BeNull();
    }

    [Fact]
    public void Activation_checkpointing_keeps_one_input_per_layer_plus_one_layer()
    {
        var plain = Plan("llama2-7b", "full", change: s => s with { BatchSize = 1, SeqLen = 1000 });
        var ckpt = Plan("llama2-7b", "full", change: s => s with { BatchSize = 1, SeqLen = 1000, ActivationCheckpointing = true });
        // full fine-tuning, no GQA: per layer 9D + 3I + H + 2 = 9*4096 + 3*11008 + 32 + 2 = 69,922 elements per token (bf16);
        // the SwiGLU node keeps gate and up, not silu(gate) too
        plain.Activations!.DecoderBytes.Should().Be(32 * 69_922L * 2 * 1000);
        ckpt.Activations!.DecoderBytes.Should().Be((32 * 4096L + 69_922) * 2 * 1000);
        // head: final x, 1/rms, normed (bf16) + logits and log-softmax (fp32)
        plain.Activations.HeadBytes.Should().Be(((2 * 4096 + 1) * 2 + 2 * 32000 * 4L) * 1000);
    }
}
