using Peft.Plugins.QLora;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.QLora;

/// <summary>Double quantization: bitsandbytes' signed 8-bit dynamic map and the absmax round trip.</summary>
[Collection(QLoraSerialCollection.Name)]
public sealed class DoubleQuantizationTests
{
    [Fact]
    public void Dynamic_map_has_bitsandbytes_structure()
    {
        var map = DynamicQuantMap.Signed;
        map.Should().HaveCount(256).And.BeInAscendingOrder();
        map[255].Should().Be(1f);
        map.Count(x => x == 0f).Should().Be(1);
        // symmetric except for +1.0: the 127 negative entries are the negated positive fractions
        var positive = map.Where(x => x > 0 && x < 1).ToArray();
        var negative = map.Where(x => x < 0).Select(x => -x).Reverse().ToArray();
        negative.Should().Equal(positive);
        // decade 10^(e-6) holds 2^e fractions: 1, 2, 4, ..., 64 positive entries per decade
        for (int e = 0; e <= 6; e++)
        {
            double lo = 0.1 * Math.Pow(10, e - 6), hi = Math.Pow(10, e - 6);
            positive.Count(x => x > lo * 0.999 && x < hi).Should().Be(1 << e, $"decade 10^{e - 6}");
        }
    }

    [Fact]
    public void Dynamic_map_entries_equal_an_independent_construction()
    {
        // Computed once with a Node.js script emulating fp32 (Math.fround) of
        // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): linspace(0.1, 1, 2^e + 1) midpoints
        // times 10^(e-6), both signs, plus 0 and 1, sorted. Bits of fp32 values.
        (int Index, uint Bits)[] reference =
        [
            (0, 0xbf7e3333), (63, 0xbddb3334), (126, 0xb513a3b7), (127, 0x00000000), (128, 0x3513a3b7),
            (129, 0x365a1a94), (130, 0x370205ff), (254, 0x3f7e3333), (255, 0x3f800000),
        ];
        foreach (var (i, bits) in reference)
            BitConverter.SingleToUInt32Bits(DynamicQuantMap.Signed[i]).Should().Be(bits, $"entry {i}");
        // By hand: the smallest positive entry is 10^-6 * (0.1 + 1) / 2 = 5.5e-7; the largest fraction (0.9859375 + 1) / 2.
        ((double)DynamicQuantMap.Signed[128]).Should().BeApproximately(5.5e-7, 1e-12);
        ((double)DynamicQuantMap.Signed[254]).Should().BeApproximately((1 - 0.9 / 64 + 1) / 2, 1e-6);
    }

    [Fact]
    public void Absmax_round_trip_error_is_within_half_the_widest_map_gap_times_the_nested_absmax()
    {
        // Derivation: the stored value is absmax_j - offset = s_j * N_b with |s_j| <= 1 (N_b = nested absmax of its
        // 256-block). Rounding s_j to the nearest map entry errs by at most half the widest gap G between adjacent
        // entries (the top decade: 0.9 / 64 = 0.0140625), so |absmax_j - deq_j| <= N_b * G / 2 (+ fp32 rounding).
        var map = DynamicQuantMap.Signed;
        double gap = map.Zip(map.Skip(1), (a, b) => (double)b - a).Max();
        gap.Should().BeApproximately(0.9 / 64, 1e-6);

        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        var a = torch.randn(700, 64 * 3) * torch.linspace(0.01, 3, 700).unsqueeze(1);   // 2100 blocks, 9 nested blocks
        using var plain = CpuFourBitKernels.Instance.Quantize(a, FourBitType.Nf4, 64, false);
        using var dq = CpuFourBitKernels.Instance.Quantize(a, FourBitType.Nf4, 64, true);
        var exact = plain.Absmax!.data<float>().ToArray();
        var decoded = new float[dq.Blocks];
        CpuFourBitKernels.DecodeAbsmax(dq, decoded);
        var nested = dq.NestedAbsmax!.data<float>().ToArray();
        nested.Should().HaveCount(9);
        dq.Offset.Should().BeApproximately((float)exact.Average(), 1e-5f);
        for (int j = 0; j < exact.Length; j++)
        {
            double bound = nested[j / 256] * gap / 2 + 4e-7 * Math.Abs(exact[j]);
            ((double)Math.Abs(exact[j] - decoded[j])).Should().BeLessThanOrEqualTo(bound, $"block {j}");
        }
        // And the packed codes are identical: double quantization changes only how absmax is stored.
        dq.Packed.data<byte>().ToArray().Should().Equal(plain.Packed.data<byte>().ToArray());
    }

    [Fact]
    public void Quantizing_to_the_map_is_nearest_with_ties_to_the_lower_entry()
    {
        var map = DynamicQuantMap.Signed;
        for (int i = 0; i < 255; i++)
        {
            float mid = (map[i] + map[i + 1]) / 2f;
            DynamicQuantMap.Quantize(map[i]).Should().Be((byte)i);
            if (mid != map[i] && mid != map[i + 1]) DynamicQuantMap.Quantize(mid).Should().Be((byte)i);
        }
        DynamicQuantMap.Quantize(1f).Should().Be(255);
        DynamicQuantMap.Quantize(-1f).Should().Be(0);
    }
}
