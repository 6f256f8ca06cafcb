namespace Peft.Host.Training;

/// <summary>
/// The highest <see cref="ProcessMemory.HeapInUse"/> (glibc's live C-heap bytes: LibTorch's CPU tensors and every other
/// malloc) seen while this object lives, sampled every <c>periodMs</c> (default 5) on a background thread; mallinfo2
/// takes a few µs. Unlike VmHWM it leaves out the free chunks glibc keeps resident, which on this machine vary by tens
/// of MB between identical runs. A peak shorter than the period can be missed; a training step's peak (end of forward
/// to the loss) lasts hundreds of ms on the bench's model. Null readings where mallinfo2 is missing.
/// </summary>
public sealed class HeapPeakSampler : IDisposable
{
    readonly Thread? _thread;
    volatile bool _stop;
    long _peak;

    public HeapPeakSampler(int periodMs = 5)
    {
        if (ProcessMemory.HeapInUse() is not { } first) return;
        _peak = first;
        _thread = new Thread(() =>
        {
            while (!_stop)
            {
                if (ProcessMemory.HeapInUse() is { } now && now > Interlocked.Read(ref _peak)) Interlocked.Exchange(ref _peak, now);
                Thread.Sleep(periodMs);
            }
        }) { IsBackground = true, Name = "heap peak sampler" };
        _thread.Start();
    }

    /// <summary>The peak so far, the current reading included (null where mallinfo2 is missing); read it after <see cref="Dispose"/> for the final figure.</summary>
    public long? PeakBytes =>
        _thread is null ? null : Math.Max(ProcessMemory.HeapInUse() ?? 0, Interlocked.Read(ref _peak));

    public void Dispose()
    {
        _stop = true;
        _thread?.Join();
    }
}
