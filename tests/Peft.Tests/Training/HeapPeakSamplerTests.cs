using Peft.Host.Training;
using TorchSharp;

namespace Peft.Tests.Training;

/// <summary>
/// The bench's live-heap figure (<see cref="HeapPeakSampler"/>): a 64 MiB tensor that lives for 100 ms inside the
/// sampler's life and is freed before it ends must show in the peak, and not in the reading after it is freed.
/// Runs in a collection of its own that runs alone, so no other test's allocations move the figures.
/// </summary>
[Collection(HeapPeakSamplerCollection.Name)]
public sealed class HeapPeakSamplerTests
{
    [Fact]
    public void The_peak_holds_a_short_lived_allocation_that_the_final_reading_does_not()
    {
        long before = ProcessMemory.HeapInUse() ?? throw new InvalidOperationException("the tests run on Linux with glibc ≥ 2.33");
        long bytes = 64L << 20;
        long? peak;
        using (var sampler = new HeapPeakSampler(periodMs: 2))
        {
            using (var t = torch.ones(bytes / 4))   // touched: ones, not empty
            {
                Thread.Sleep(100);
                t.sum().Dispose();
            }
            Thread.Sleep(20);
            sampler.Dispose();
            peak = sampler.PeakBytes;
        }
        long after = ProcessMemory.HeapInUse()!.Value;
        peak.Should().NotBeNull();
        (peak!.Value - before).Should().BeGreaterThanOrEqualTo(bytes - (4L << 20), "the 64 MiB tensor was alive for 100 ms of 2 ms samples");
        (after - before).Should().BeLessThan(bytes / 2, "the tensor is freed: the reading now is back near the start");
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HeapPeakSamplerCollection
{
    public const string Name = "heap peak sampler (alone)";
}
