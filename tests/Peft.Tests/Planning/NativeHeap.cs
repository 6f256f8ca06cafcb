using System.Runtime.InteropServices;

namespace Peft.Tests.Planning;

/// <summary>
/// Bytes the C heap has handed out and not yet taken back (glibc <c>mallinfo2</c>: <c>uordblks + hblkhd</c>, every
/// arena and every mmapped chunk). LibTorch's CPU allocator gets its tensors from malloc (posix_memalign), the .NET
/// GC does not, so the difference between two readings around a forward pass is the bytes of the tensors the pass
/// left alive: what autograd saved for backward plus the logits and the loss. Freed memory the allocator keeps
/// cached does not count, unlike resident set size.
/// </summary>
static class NativeHeap
{
    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    static extern MallInfo2 mallinfo2();

    public static bool Available => OperatingSystem.IsLinux();

    public static long InUse()
    {
        var m = mallinfo2();
        return (long)m.Uordblks + (long)m.Hblkhd;
    }
}
