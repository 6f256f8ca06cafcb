using System.Runtime.InteropServices;

namespace Peft.Host.Training;

/// <summary>
/// Bytes the C heap has handed out and not yet taken back: glibc's <c>mallinfo2()</c>, <c>uordblks</c> (in use in
/// every arena) + <c>hblkhd</c> (in use in mmapped chunks). LibTorch's CPU tensors are malloc'd, so this is the live
/// native memory of a training step without the allocator's slack: VmRSS / VmHWM also count free chunks glibc keeps
/// resident, which on this machine vary by tens of MB between identical runs. Linux with glibc ≥ 2.33 only.
/// </summary>
public static partial class NativeHeap
{
    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [LibraryImport("libc", EntryPoint = "mallinfo2")]
    private static partial MallInfo2 MallInfo2Native();

    static readonly Lazy<bool> s_available = new(() =>
    {
        if (!OperatingSystem.IsLinux()) return false;
        try { _ = MallInfo2Native(); return true; }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }   // musl, or glibc before 2.33
    });

    /// <summary>Whether <see cref="InUseBytes"/> can be read in this process.</summary>
    public static bool Available => s_available.Value;

    /// <summary>Live C-heap bytes now (see the class comment); null where glibc's mallinfo2 is missing.</summary>
    public static long? InUseBytes()
    {
        if (!Available) return null;
        var m = MallInfo2Native();
        return (long)(m.Uordblks + m.Hblkhd);
    }

    /// <summary>
    /// The highest <see cref="InUseBytes"/> seen while this object lives, sampled every <c>periodMs</c> (default 5) on a
    /// background thread (mallinfo2 takes a few µs). A peak shorter than the period can be missed; a training step's
    /// peak (end of forward to the loss) lasts hundreds of ms on the bench's model.
    /// </summary>
    public sealed class PeakSampler : IDisposable
    {
        readonly Thread? _thread;
        volatile bool _stop;
        long _peak;

        public PeakSampler(int periodMs = 5)
        {
            if (!Available) return;
            _peak = InUseBytes()!.Value;
            _thread = new Thread(() =>
            {
                while (!_stop)
                {
                    long now = InUseBytes()!.Value;
                    if (now > Interlocked.Read(ref _peak)) Interlocked.Exchange(ref _peak, now);
                    Thread.Sleep(periodMs);
                }
            }) { IsBackground = true, Name = "native heap sampler" };
            _thread.Start();
        }

        /// <summary>The peak so far (null where mallinfo2 is missing); read it after <see cref="Dispose"/> for the final figure.</summary>
        public long? PeakBytes
        {
            get
            {
                if (_thread is null) return null;
                long now = InUseBytes()!.Value;
                return Math.Max(now, Interlocked.Read(ref _peak));
            }
        }

        public void Dispose()
        {
            _stop = true;
            _thread?.Join();
        }
    }
}
