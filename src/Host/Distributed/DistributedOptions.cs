using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Host.Distributed;

/// <summary>
/// The <c>distributed</c> section; it only matters under <c>mpiexec -n N</c> (a single process ignores it):
/// <code>
/// "distributed": { "zero": 0, "bucket_mb": 25, "direct_kb": 256 }
/// </code>
/// </summary>
public sealed class DistributedOptions : IValidatableOptions
{
    public const string Section = "distributed";

    /// <summary>ZeRO stage: 0 = every rank holds the whole optimizer state; 1 = each rank holds (and updates) the state of 1/N of the trainable parameters.</summary>
    [ConfigurationKeyName("zero")] public int Zero { get; set; }

    /// <summary>Gradients are all-reduced in flat buckets of at most this many MiB (fewer, larger messages).</summary>
    [ConfigurationKeyName("bucket_mb")] public double BucketMb { get; set; } = 25;

    public long BucketBytes => Math.Max(4, (long)(BucketMb * 1024 * 1024));

    /// <summary>A gradient of at least this many KiB is all-reduced in place on its own memory (no bucket copy); 0: every one.</summary>
    [ConfigurationKeyName("direct_kb")] public double DirectKb { get; set; } = 256;

    public long DirectBytes => (long)(DirectKb * 1024);

    public static DistributedOptions From(IConfiguration root) => OptionsBinding.Bind<DistributedOptions>(root.GetSection(Section));

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        if (Zero is not (0 or 1)) yield return ("zero", Zero, "must be 0 (no sharding) or 1 (shard the optimizer state across ranks)");
        if (!(BucketMb > 0 && BucketMb <= 4096)) yield return ("bucket_mb", BucketMb, "must be a positive number of MiB (at most 4096)");
        if (!(DirectKb >= 0 && DirectKb <= 4L << 20)) yield return ("direct_kb", DirectKb, "must be a number of KiB from 0 (every gradient in place) to 4194304");
    }
}
