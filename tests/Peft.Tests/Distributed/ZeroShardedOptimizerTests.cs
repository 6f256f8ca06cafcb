using Peft.Abstractions.Distributed;
using Peft.Abstractions.Optimization;
using Peft.Host.Distributed;
using Peft.Host.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Distributed;

/// <summary>
/// The ZeRO-1 step's own arithmetic in one process, through the communicator contract's default collectives
/// (reduce-scatter = all-reduce + slice, all-gather = one broadcast per segment): over a world of one rank the
/// reduce-scatter, the sharded clipping and the all-gather must leave exactly what the unsharded trainer computes
/// (<see cref="GradientClipping"/> + AdamW). The 2-rank equalities run under mpiexec in <see cref="DataParallelTests"/>.
/// </summary>
public sealed class ZeroShardedOptimizerTests
{
    /// <summary>A world of one rank that uses the interface's default reduce-scatter and all-gather.</summary>
    sealed class OneRank : IGradientCommunicator
    {
        public int Calls;
        public int Rank => 0;
        public int WorldSize => 1;
        public string Transport => "test";
        public double CommunicationSeconds => 0;
        public void AllReduceSum(Tensor tensor) => Calls++;
        public void Broadcast(Tensor tensor, int root) => Calls++;
        public void Dispose() { }
    }

    static List<(string, Parameter)> Parameters(int seed)
    {
        using var _ = torch.random.manual_seed(seed);
        // one tensor above a small bucket, two that share one, one frozen
        return [("a", new Parameter(torch.randn(40, 30))), ("b", new Parameter(torch.randn(7))), ("c", new Parameter(torch.randn(5, 3))),
                ("d", new Parameter(torch.randn(4), requires_grad: false))];
    }

    [Theory]
    [InlineData(0.5)]    // clipped: the gradients' norm is far above 0.5
    [InlineData(1e6)]    // not clipped
    public void Reduce_scatter_sharded_clipping_and_all_gather_reproduce_the_unsharded_step(double maxNorm)
    {
        var expected = Parameters(7);
        var actual = Parameters(7);
        var settings = new OptimizerSettings(0.01, 0.1, 0.9, 0.999, 1e-8);
        using var plain = new AdamWOptimizer(expected, settings);
        var comm = new OneRank();
        using var sharded = new ZeroShardedOptimizer(actual, comm, shard => new AdamWOptimizer(shard, settings), bucketBytes: 200 * 4);
        for (int step = 0; step < 3; step++)
        {
            using (var _ = torch.random.manual_seed(100 + step))
                foreach (var (e, a) in expected.Zip(actual))
                    if (e.Item2.requires_grad)
                    {
                        var g = torch.randn(e.Item2.shape) * 3;
                        e.Item2.grad = g.clone();
                        a.Item2.grad = g;
                    }
            double normExpected = GradientClipping.ClipByGlobalNorm(expected.Select(p => p.Item2), maxNorm);
            plain.Step(0.01);
            sharded.ReduceGradients();
            double normActual = sharded.ClipByGlobalNorm(maxNorm);
            sharded.Step(0.01);
            normActual.Should().BeApproximately(normExpected, 1e-5 * normExpected);
            foreach (var (e, a) in expected.Zip(actual))
                (e.Item2 - a.Item2).abs().max().item<float>().Should().BeLessThan(1e-6f, $"parameter {e.Item1} after step {step + 1}");
            plain.ZeroGrad();
            sharded.ZeroGrad();
        }
        // per step: a reduce-scatter and an all-gather per bucket (2 buckets: "a" alone, then "b" and "c"), one norm all-reduce
        comm.Calls.Should().Be(3 * (2 + 2 + 1));
        sharded.StateBytes.Should().Be(plain.StateBytes, "one rank owns every parameter");
    }
}
