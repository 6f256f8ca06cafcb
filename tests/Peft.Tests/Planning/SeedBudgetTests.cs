using Peft.Host.Planning;
using static Peft.Tests.Planning.PlanTestKit;

namespace Peft.Tests.Planning;

/// <summary>
/// The seed's numbers (../shared/seed/000_20695f396bf2c68f.txt) reproduced with its own assumptions
/// (<c>--seed-assumptions</c>), and where they do not hold. GB = 1e9 bytes, as the seed.
/// </summary>
public sealed class SeedBudgetTests
{
    static MemoryPlan Seed(SeedInputs i) => SeedBudget.Plan(Preset("seed-70b"), i, new PlanSettings { Components = Config(new()) });
    static double Gb(long bytes) => bytes / 1e9;

    [Fact]
    public void Lora_r16_on_four_attention_matrices_of_80_layers()
    {
        var p = Seed(new SeedInputs("lora", Rank: 16, AdaptedMatricesPerLayer: 4));
        p.TrainableParameters.Should().Be(83_886_080);                      // 4 * 80 * 2 * 8192 * 16
        Gb(p.Bytes.BaseWeightBytes).Should().Be(140.0);                      // 70e9 * 2
        Math.Round(Gb(p.Bytes.TrainableWeightBytes), 3).Should().Be(0.168);  // fp16 adapter weights
        Math.Round(Gb(p.Bytes.GradientBytes), 3).Should().Be(0.168);         // fp16 gradients
        Math.Round(Gb(p.Bytes.OptimizerStateBytes + p.Bytes.MasterWeightBytes), 3).Should().Be(1.007); // 12 B: m, v, master
        Math.Round(Gb(p.Bytes.TotalBytes), 2).Should().Be(141.34);
        // the seed prints 1.006 GB for the optimizer row: 83,886,080 * 12 = 1,006,632,960 bytes, i.e. 1.0066 GB (it truncates)
        (p.Bytes.OptimizerStateBytes + p.Bytes.MasterWeightBytes).Should().Be(1_006_632_960);
    }

    [Fact]
    public void Full_fine_tuning_is_1_12_TB()
    {
        Seed(new SeedInputs("full")).Bytes.TotalBytes.Should().Be(1_120_000_000_000); // 70e9 * 16
    }

    [Fact]
    public void Qlora_is_43_34_GB_at_r16_and_47_37_GB_at_r64()
    {
        var r16 = Seed(new SeedInputs("qlora", Rank: 16));
        Math.Round(Gb(r16.Bytes.BaseWeightBytes + r16.Bytes.QuantizationStatisticsBytes), 1).Should().Be(35.6);
        Math.Round(Gb(r16.Bytes.TotalBytes), 2).Should().Be(43.34);          // 35.6 + 1.342 + 6.4
        Math.Round(Gb(Seed(new SeedInputs("qlora", Rank: 64)).Bytes.TotalBytes), 2).Should().Be(47.37); // 35.6 + 5.369 + 6.4
    }

    [Fact]
    public void Galore_r128_on_seven_matrices_follows_the_seeds_code_not_its_printed_total()
    {
        var p = Seed(new SeedInputs("galore", GaloreRank: 128, GaloreMatricesPerLayer: 7));
        Gb(p.Bytes.TrainableWeightBytes).Should().Be(140.0);
        Gb(p.Bytes.GradientBytes).Should().Be(140.0);
        Math.Round(Gb(p.Bytes.OptimizerStateBytes), 3).Should().Be(0.073);   // 560 * 128 * 128 * 8
        // the seed's code: proj_per_matrix = 2 * d_model * rank * 2 = 4,194,304 B; * 560 = 2.35 GB
        p.Bytes.ProjectionBytes.Should().Be(560L * 2 * 8192 * 128 * 2);
        Math.Round(Gb(p.Bytes.TotalBytes), 2).Should().Be(282.42);
        // the seed prints "projections_gb: 18.35" and "total_gb: 298.42": exactly 16.00 GB more than its own code gives
        Math.Round(298.42 - Gb(p.Bytes.TotalBytes), 2).Should().Be(16.00);
    }

    [Fact]
    public void Lisa_k2_is_164_5_GB()
    {
        var p = Seed(new SeedInputs("lisa", LisaK: 2));
        p.ActiveTrainableParameters.Should().Be(1_750_000_000);               // 2/80 * 70e9
        Gb(p.Bytes.OptimizerStateBytes + p.Bytes.MasterWeightBytes).Should().Be(21.0);
        Gb(p.Bytes.GradientBytes).Should().Be(3.5);
        Gb(p.Bytes.TotalBytes).Should().Be(164.5);
        // the seed's comparison table row says "LISA k=4: 165 GB", but k=4 by its own formula is 140 + 42 + 7 = 189 GB
        Gb(Seed(new SeedInputs("lisa", LisaK: 4)).Bytes.TotalBytes).Should().Be(189.0);
    }

    [Fact]
    public void Galore_on_int8_is_about_210_GB()
    {
        var p = Seed(new SeedInputs("galore", Quantize: "int8"));
        Gb(p.Bytes.TrainableWeightBytes).Should().Be(70.0);
        // "approximately 210 GB": 70 + 140 + 0.073 + 2.35 = 212.42; within 1.2 %
        Gb(p.Bytes.TotalBytes).Should().BeApproximately(210, 2.5);
        Math.Round(Gb(p.Bytes.TotalBytes), 2).Should().Be(212.42);
    }

    [Fact]
    public void Seed_nf4_statistics_are_half_what_its_own_scale_format_costs()
    {
        // the seed: one FP8 scale per 64 weights -> 70e9 / 64 bytes = 1.09 GB, yet it writes 0.57 GB;
        // bitsandbytes' double quantization costs 8/64 + 32/(64*256) = 0.127 bits per weight: 70e9 * 0.127 / 8 = 1.11 GB
        (70e9 / 64 / 1e9).Should().BeApproximately(1.094, 0.001);
        (70e9 * (8.0 / 64 + 32.0 / (64 * 256)) / 8 / 1e9).Should().BeApproximately(1.11, 0.005);
        // its "savings" 70e9 * 0.5 * 0.094 = 3.29 GB: fp32 absmax (0.5 bits/weight) -> DQ (0.127) saves 0.373 bits = 3.26 GB
        (70e9 * (0.5 - 0.126953125) / 8 / 1e9).Should().BeApproximately(3.26, 0.005);
    }

    [Fact]
    public void Corrected_plan_differs_where_the_seed_is_wrong()
    {
        // GQA: llama2-70b's K/V are 8192 x 1024, so LoRA r=16 on q,k,v,o is 80 * 16 * (2*16384 + 2*9216) = 65,536,000, not 83,886,080
        Plan("llama2-70b", "lora", new MethodKnobs { Rank = 16, TargetModules = Attention }).TrainableParameters.Should().Be(65_536_000);
        // GaLore one-sided: r x max(m, n) moments; on the seed's square 8192 matrices 128 * 8192 * 8 B = 8.4 MB each, not 128 KB
        var seedModel = Plan("seed-70b", "galore", new MethodKnobs { GaloreRank = 128 });
        long square = 2 * 128 * 8192 * 4L;
        seedModel.Bytes.OptimizerStateBytes.Should().BeGreaterThan(80 * 4 * square);
    }
}
