using System.Diagnostics;
using System.Globalization;
using Peft.Plugins.QLora;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Bench;

/// <summary>
/// <c>--dequant</c>: how fast the QLoRA plugin's CPU kernel (<see cref="CpuFourBitKernels"/>, the 256-entry
/// byte→pair table) turns packed 4-bit weights back into fp32, beside a plain fp32 tensor copy of the same size
/// (<c>dst.copy_(src)</c>, what any dense layer would pay to move its weight once) and beside the same
/// dequantization written with torch ops (unpack nibbles, gather the code, multiply by the block absmax).
/// Throughput is GB/s of fp32 written (out·in·4 bytes per call); each figure is the median of the timed calls
/// into one preallocated destination (the way <see cref="FourBitLinear"/> reuses its scratch buffer).
/// </summary>
public static class DequantThroughput
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>(rows, cols, what it is): a 7B-class projection and stories15M's MLP weight.</summary>
    static readonly (long Out, long In, string What)[] Shapes =
    [
        (4096, 4096, "4096 × 4096 (a Llama-7B attention projection, 64 MiB fp32)"),
        (768, 288, "768 × 288 (stories15M's w1/w3, 864 KiB fp32, cache-resident)"),
    ];

    public static int Run(BenchOptions o)
    {
        torch.set_num_threads(o.Threads);
        torch.manual_seed(o.Seed);
        int reps = Math.Max(5, o.Steps * 3);
        Console.WriteLine($"Peft.Bench --dequant: NF4 dequantization (CpuFourBitKernels) vs an fp32 copy of the same size; " +
                          $"{o.WarmupSteps} warm-up + {reps} timed calls each, median; torch.set_num_threads({o.Threads}) " +
                          "(the 4-bit kernel itself runs on one thread)");
        Console.WriteLine();
        Console.WriteLine("| weight | fp32 copy (copy_) | NF4 table kernel, double quant | NF4 table kernel, no double quant | NF4 with torch ops | table kernel / copy |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        foreach (var (rows, cols, what) in Shapes)
        {
            using var scope = torch.NewDisposeScope();
            var w = torch.randn(rows, cols) * 0.02f;
            var src = torch.randn(rows * cols);
            var dst = torch.empty(rows * cols);
            var kernels = CpuFourBitKernels.Instance;
            using var dq = kernels.Quantize(w, FourBitType.Nf4, 64, doubleQuant: true);
            using var plain = kernels.Quantize(w, FourBitType.Nf4, 64, doubleQuant: false);

            double bytes = rows * cols * 4.0;
            double copy = Median(o.WarmupSteps, reps, () => dst.copy_(src));
            double tableDq = Median(o.WarmupSteps, reps, () => kernels.Dequantize(dq, dst));
            double tablePlain = Median(o.WarmupSteps, reps, () => kernels.Dequantize(plain, dst));
            var codes = torch.tensor(FourBitCodebook.Nf4);
            double ops = Median(o.WarmupSteps, reps, () => TorchOps(plain, codes, dst));

            // the kernels must agree (the bench measures the real thing, not a shortcut)
            kernels.Dequantize(plain, dst);
            var viaOps = torch.empty(rows * cols);
            TorchOps(plain, codes, viaOps);
            if (!dst.eq(viaOps).all().item<bool>()) throw new InvalidOperationException("the torch-ops dequantization differs from the kernel's");

            string Gb(double s) => string.Create(Inv, $"{bytes / s / 1e9:0.00} GB/s ({s * 1e3:0.00} ms)");
            Console.WriteLine(string.Create(Inv, $"| {what} | {Gb(copy)} | {Gb(tableDq)} | {Gb(tablePlain)} | {Gb(ops)} | {copy / tableDq:0.00}× |"));
        }
        return 0;
    }

    /// <summary>deq with torch ops: hi/lo nibbles → code values → (blocks, 64) × absmax; written into <paramref name="dst"/>.</summary>
    static void TorchOps(FourBitWeights w, Tensor codes, Tensor dst)
    {
        using var scope = torch.NewDisposeScope();
        var packed = w.Packed.flatten().to(ScalarType.Int64);
        var idx = torch.stack([packed.bitwise_right_shift(4), packed.bitwise_and(15)], dim: 1).flatten();   // first element: high nibble
        var values = codes.index_select(0, idx).view(-1, w.BlockSize);
        dst.view(-1, w.BlockSize).copy_(values.mul_(w.Absmax!.unsqueeze(1)));
    }

    static double Median(int warmup, int reps, Action call)
    {
        for (int i = 0; i < warmup; i++) call();
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            call();
            times[i] = sw.Elapsed.TotalSeconds;
        }
        Array.Sort(times);
        return reps % 2 == 1 ? times[reps / 2] : (times[reps / 2 - 1] + times[reps / 2]) / 2;
    }
}
