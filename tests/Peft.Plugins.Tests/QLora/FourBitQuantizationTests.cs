using Peft.Abstractions;
using Peft.Plugins.QLora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.QLora;

/// <summary>NF4 / FP4 blockwise quantization against bitsandbytes' own numbers and hand-made vectors.</summary>
[Collection(QLoraSerialCollection.Name)]
public sealed class FourBitQuantizationTests
{
    static readonly IFourBitKernels Cpu = CpuFourBitKernels.Instance;

    static float[] RoundTrip(float[] values, FourBitType type, int blockSize = 64, bool dq = false)
    {
        using var scope = torch.NewDisposeScope();
        using var w = Cpu.Quantize(torch.tensor(values).reshape(1, values.Length), type, blockSize, dq);
        var dst = torch.empty(values.Length);
        Cpu.Dequantize(w, dst);
        return dst.data<float>().ToArray();
    }

    static byte[] Packed(float[] values, FourBitType type, int blockSize = 64)
    {
        using var scope = torch.NewDisposeScope();
        using var w = Cpu.Quantize(torch.tensor(values).reshape(1, values.Length), type, blockSize, false);
        return w.Packed.data<byte>().ToArray();
    }

    static byte Code(byte[] packed, int i) => (byte)((i & 1) == 0 ? packed[i >> 1] >> 4 : packed[i >> 1] & 15);

    // bitsandbytes tests/test_functional.py test_4bit_quant: A = randn(1024, 1024), err = mean|A - deq(q(A))|,
    // (mean, std) over 200 samples; bnb asserts err < mean + 7 std. We check both sides of the band.
    [Theory]
    [InlineData(FourBitType.Nf4, 64, 0.072798, 0.000074)]
    [InlineData(FourBitType.Fp4, 64, 0.096543, 0.000111)]
    [InlineData(FourBitType.Nf4, 32, 0.067746, 0.000069)]
    [InlineData(FourBitType.Nf4, 4096, 0.092547, 0.000360)]
    [InlineData(FourBitType.Fp4, 256, 0.108684, 0.000182)]
    public void Randn_1024x1024_mean_abs_error_is_inside_bitsandbytes_band(FourBitType type, int blockSize, double mean, double std)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(1234);
        var a = torch.randn(1024, 1024);
        using var w = Cpu.Quantize(a, type, blockSize, doubleQuant: false);
        var deq = torch.empty(1024, 1024);
        Cpu.Dequantize(w, deq);
        double err = (a - deq).abs().mean().item<float>();
        err.Should().BeInRange(mean - 7 * std, mean + 7 * std, $"{type} blocksize {blockSize}");
    }

    [Fact]
    public void Nf4_thresholds_are_the_cuda_kernel_pivots()
    {
        // nf4_reference_from_bitsandbytes.json cuda_quantize_decision_tree_thresholds (kernels.cu dQuantizeNF4).
        double[] cuda = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                         -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                         0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                         0.5016634166240692, 0.6427869200706482, 0.8614784181118011];
        FourBitCodebook.Nf4Thresholds.Select(t => (double)t).Should().Equal(cuda.Select(c => (double)(float)c));
    }

    [Theory]
    [InlineData(FourBitType.Nf4)]
    [InlineData(FourBitType.Fp4)]
    public void Each_code_value_maps_to_itself(FourBitType type)
    {
        // Block = the 16 code values (absmax 1.0 exactly), so scaled value == code value.
        var codes = FourBitCodebook.Codes(type);
        var packed = Packed(codes, type);
        var back = RoundTrip(codes, type);
        for (int i = 0; i < 16; i++)
        {
            back[i].Should().Be(codes[i], $"code {i} dequantizes to itself");
            if (type == FourBitType.Fp4 && i == 8) Code(packed, i).Should().Be(0, "-0.0 is not < 0: the FP4 kernel gives +0 (code 0)");
            else Code(packed, i).Should().Be((byte)i, $"value {codes[i]} is code {i}");
        }
    }

    [Fact]
    public void A_value_on_a_midpoint_goes_to_the_lower_code_and_just_above_to_the_upper()
    {
        var t = FourBitCodebook.Nf4Thresholds;
        for (int i = 0; i < t.Length; i++)
        {
            FourBitCodebook.QuantizeNf4(t[i]).Should().Be((byte)i, $"midpoint {t[i]} between codes {i} and {i + 1}");
            FourBitCodebook.QuantizeNf4(MathF.BitIncrement(t[i])).Should().Be((byte)(i + 1));
            FourBitCodebook.QuantizeNf4(MathF.BitDecrement(t[i])).Should().Be((byte)i);
        }
        // Through the whole quantizer: block [1.0, midpoint(codes 8, 9)] -> second element code 8 (0.0795...).
        var mid = (FourBitCodebook.Nf4[8] + FourBitCodebook.Nf4[9]) / 2f;
        Code(Packed([1f, mid], FourBitType.Nf4), 1).Should().Be(8);
        // FP4 (kernels.cu dQuantizeFP4): 3.5/12 between 3/12 (code 7) and 4/12 (code 4) -> smaller magnitude.
        FourBitCodebook.QuantizeFp4(0.29166667f).Should().Be(0b0111);
        FourBitCodebook.QuantizeFp4(MathF.BitIncrement(0.29166667f)).Should().Be(0b0100);
        FourBitCodebook.QuantizeFp4(-0.29166667f).Should().Be(0b1111);
    }

    [Fact]
    public void First_element_goes_to_the_high_nibble()
    {
        // NF4: 1.0 -> code 15, -1.0 -> code 0, 0 -> code 7.
        Packed([1f, -1f, 0f, 1f], FourBitType.Nf4).Should().Equal(0xF0, 0x7F);
    }

    [Fact]
    public void An_odd_length_pads_one_nibble_and_dequantizes_every_element()
    {
        float[] v = [0.5f, -1f, 1f];
        var packed = Packed(v, FourBitType.Nf4);
        packed.Should().HaveCount(2, "3 codes take 2 bytes");
        (packed[1] >> 4).Should().Be(15);
        (packed[1] & 15).Should().Be(7, "the pad is bnb's padded 0.0, i.e. NF4's zero code");
        var back = RoundTrip(v, FourBitType.Nf4);
        back.Should().HaveCount(3);
        back[1].Should().Be(-1f);
        back[2].Should().Be(1f);
        back[0].Should().Be(FourBitCodebook.Nf4[12], "0.5 is nearer 0.4407 (code 12, off by 0.0593) than 0.5626 (off by 0.0626)");
    }

    [Fact]
    public void A_short_last_block_gets_its_own_absmax()
    {
        // 70 values, blocks of 64: block 0 absmax 10, block 1 (6 values) absmax 0.25.
        var v = new float[70];
        v[3] = 10f;
        for (int i = 64; i < 70; i++) v[i] = 0.25f * (i % 2 == 0 ? 1 : -1);
        using var scope = torch.NewDisposeScope();
        using var w = Cpu.Quantize(torch.tensor(v).reshape(7, 10), FourBitType.Nf4, 64, false);
        w.Absmax!.data<float>().ToArray().Should().Equal(10f, 0.25f);
        var back = RoundTrip(v, FourBitType.Nf4);
        back.Skip(64).Should().Equal(v.Skip(64), "±absmax are codes ±1 exactly");
    }

    [Fact]
    public void An_all_zero_block_gives_zeros()
    {
        var v = new float[128];
        for (int i = 64; i < 128; i++) v[i] = i - 100;
        foreach (var type in new[] { FourBitType.Nf4, FourBitType.Fp4 })
            foreach (var dq in new[] { false, true })
                RoundTrip(v, type, 64, dq).Take(64).Should().OnlyContain(x => x == 0f, $"{type} dq={dq}");
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NaN_or_Inf_weights_are_refused_naming_the_layer(float bad)
    {
        using var scope = torch.NewDisposeScope();
        using var w = torch.randn(4, 8);
        w[2, 5] = bad;
        using var layer = new TestLinear(w);
        var act = () => new Nf4Quantizer().Quantize("model.layers.1.mlp.up_proj", layer, new FourBitQuantizationOptions());
        act.Should().Throw<PeftDataException>().Which.Message.Should()
            .Contain("model.layers.1.mlp.up_proj").And.Contain("[2, 5]").And.Contain("non-finite");
    }

    [Fact]
    public void Abs_max_of_each_block_round_trips_exactly_without_double_quantization()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var a = torch.randn(96, 40);
        using var w = Cpu.Quantize(a, FourBitType.Nf4, 128, false);
        var expected = a.flatten().split(128).Select(b => b.abs().max().item<float>()).ToArray();
        w.Absmax!.data<float>().ToArray().Should().Equal(expected);
        w.Packed.shape.Should().Equal(96 * 40 / 2, 1);
    }
}
