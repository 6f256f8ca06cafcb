using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
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
/// A second table prices a whole quantized projection inside training (<see cref="LayerSteps"/>): what QLoRA adds to a
/// step over LoRA's dense base, per stories15M shape, measured call by call beside the dense layer.
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
        LayerSteps(o, reps);
        return 0;
    }

    /// <summary>stories15M's three projection shapes (out, in) and how many of each its 6 layers hold.</summary>
    static readonly (long Out, long In, int Count)[] LayerShapes = [(288, 288, 24), (768, 288, 12), (288, 768, 6)];

    /// <summary>
    /// One frozen projection inside training, at the bench's batch (batch × seq tokens): forward y = x·Wᵀ, then backward
    /// to the input gradient (the base's share of a QLoRA step), dense fp32 <c>linear</c> vs <see cref="FourBitLinear"/>
    /// (NF4, blocks of 64, double quantization), the two alternating call by call; medians of the calling thread's CPU
    /// time (with one torch thread every op runs on it), which other processes on a shared machine disturb far less
    /// than wall time; wall time where the thread clock cannot be read.
    /// </summary>
    static void LayerSteps(BenchOptions o, int reps)
    {
        long tokens = (long)o.BatchSize * o.SeqLen;
        Console.WriteLine();
        Console.WriteLine($"One frozen projection, forward + backward to the input gradient, {tokens} tokens (batch {o.BatchSize} × {o.SeqLen}), " +
                          $"{o.WarmupSteps} warm-up + {reps} timed calls each, alternating, median {(ThreadClock.Readable ? "thread CPU time" : "wall time")}:");
        Console.WriteLine();
        Console.WriteLine("| weight (out × in) | per stories15M step | fp32 linear | NF4 FourBitLinear | NF4 / fp32 | NF4 forward only (no grad) | fp32 forward only |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        double denseTotal = 0, nf4Total = 0;
        foreach (var (rows, cols, count) in LayerShapes)
        {
            using var scope = torch.NewDisposeScope();
            var w = torch.randn(rows, cols) * 0.02f;
            using var layer = new FourBitLinear("bench", CpuFourBitKernels.Instance.Quantize(w, FourBitType.Nf4, 64, doubleQuant: true), null,
                                                ScalarType.Float32, CpuFourBitKernels.Instance);
            var x = torch.randn(o.BatchSize, o.SeqLen, cols);
            var g = torch.randn(o.BatchSize, o.SeqLen, rows);
            void Train(Func<Tensor, Tensor> f)
            {
                using var s = torch.NewDisposeScope();
                var xi = x.detach().requires_grad_(true);
                f(xi).backward([g]);
            }
            void Eval(Func<Tensor, Tensor> f)
            {
                using var s = torch.NewDisposeScope();
                using var _ = torch.no_grad();
                f(x);
            }
            var (dense, nf4) = Alternating(o.WarmupSteps, reps, () => Train(xi => nn.functional.linear(xi, w)), () => Train(layer.forward));
            var (denseEval, nf4Eval) = Alternating(o.WarmupSteps, reps, () => Eval(xi => nn.functional.linear(xi, w)), () => Eval(layer.forward));
            denseTotal += count * dense;
            nf4Total += count * nf4;
            string Ms(double s) => string.Create(Inv, $"{s * 1e3:0.00} ms");
            Console.WriteLine(string.Create(Inv, $"| {rows} × {cols} | {count} | {Ms(dense)} | {Ms(nf4)} | {nf4 / dense:0.00}× | {Ms(nf4Eval)} | {Ms(denseEval)} |"));
        }
        Console.WriteLine(string.Create(Inv, $"| all 42 (weighted) | | {denseTotal * 1e3:0.0} ms | {nf4Total * 1e3:0.0} ms | {nf4Total / denseTotal:0.00}× | | |"));
    }

    static (double A, double B) Alternating(int warmup, int reps, Action a, Action b)
    {
        for (int i = 0; i < warmup; i++) { a(); b(); }
        var ta = new double[reps];
        var tb = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            double t0 = ThreadClock.Seconds();
            a();
            double t1 = ThreadClock.Seconds();
            b();
            double t2 = ThreadClock.Seconds();
            ta[i] = t1 - t0;
            tb[i] = t2 - t1;
        }
        return (MedianOf(ta), MedianOf(tb));
    }

    /// <summary>CPU seconds of the calling thread (clock_gettime(CLOCK_THREAD_CPUTIME_ID), Linux), else wall seconds.</summary>
    static class ThreadClock
    {
        [StructLayout(LayoutKind.Sequential)]
        struct Timespec { public long Seconds, Nanoseconds; }

        [DllImport("libc", EntryPoint = "clock_gettime")]
        static extern int clock_gettime(int clock, out Timespec ts);

        const int ThreadCpuTime = 3;   // CLOCK_THREAD_CPUTIME_ID
        static readonly Stopwatch Wall = Stopwatch.StartNew();

        public static readonly bool Readable = OperatingSystem.IsLinux() && TryRead(out _);

        static bool TryRead(out double seconds)
        {
            seconds = 0;
            try
            {
                if (clock_gettime(ThreadCpuTime, out var ts) != 0) return false;
                seconds = ts.Seconds + ts.Nanoseconds * 1e-9;
                return true;
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { return false; }
        }

        public static double Seconds() => Readable && TryRead(out var s) ? s : Wall.Elapsed.TotalSeconds;
    }

    static double MedianOf(double[] times)
    {
        Array.Sort(times);
        int n = times.Length;
        return n % 2 == 1 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
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
