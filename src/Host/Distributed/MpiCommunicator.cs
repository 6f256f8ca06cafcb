using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using Peft.Abstractions.Distributed;
using static TorchSharp.torch;

namespace Peft.Host.Distributed;

/// <summary>
/// <see cref="IGradientCommunicator"/> over MPI: the registry's MPI.NET (which P/Invokes Microsoft MPI's
/// <c>msmpi</c>) bound to Debian's MPICH (<c>libmpich.so.12</c>, the same ABI) by a native-library resolver.
/// Only the raw <c>MPI.Unsafe</c> entry points are used: each collective receives the tensor's own data pointer
/// (<c>MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)</c>), so no managed array is
/// ever filled. This is the only type of the host that references MPI.NET: it is loaded (and libmpich with it)
/// only when <see cref="Launch"/> finds the process started by <c>mpiexec</c>, so a single process needs no MPI.
/// Errors are fatal (MPI's default handler): a rank whose peer died is ended by MPI's process manager.
/// </summary>
public sealed class MpiCommunicator : IGradientCommunicator
{
    /// <summary>MPICH (and Microsoft MPI) define MPI_IN_PLACE as <c>(void*)-1</c>.</summary>
    static readonly IntPtr InPlace = new(-1);
    static int _resolverSet;
    readonly Stopwatch _busy = new();
    bool _disposed;

    MpiCommunicator(int rank, int size) { Rank = rank; WorldSize = size; }

    public int Rank { get; }
    public int WorldSize { get; }
    public string Transport => "mpi (MPICH)";
    public double CommunicationSeconds => _busy.Elapsed.TotalSeconds;

    /// <summary>MPI_Init, then this rank and the world size. Throws <see cref="DllNotFoundException"/> when MPICH is not installed.</summary>
    public static unsafe MpiCommunicator Start()
    {
        if (Interlocked.Exchange(ref _resolverSet, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(MPI.Unsafe).Assembly, Resolve);
        int argc = 0;
        byte** argv = null;
        Check(MPI.Unsafe.MPI_Init(ref argc, ref argv), "MPI_Init");
        int rank = 0, size = 0;
        Check(MPI.Unsafe.MPI_Comm_rank(MPI.Unsafe.MPI_COMM_WORLD, out rank), "MPI_Comm_rank");
        Check(MPI.Unsafe.MPI_Comm_size(MPI.Unsafe.MPI_COMM_WORLD, out size), "MPI_Comm_size");
        return new MpiCommunicator(rank, size);
    }

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (!name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase)) return IntPtr.Zero;
        foreach (var candidate in new[] { "libmpich.so.12", "libmpi.so.12" })
            if (NativeLibrary.TryLoad(candidate, out var handle)) return handle;
        throw new DllNotFoundException("MPICH's libmpich.so.12 is not installed (Debian: apt-get install mpich, or run .ci/install-mpich)");
    }

    public void AllReduceSum(Tensor tensor)
    {
        var type = tensor.dtype switch
        {
            ScalarType.Float32 => MPI.Unsafe.MPI_FLOAT,
            ScalarType.Float64 => MPI.Unsafe.MPI_DOUBLE,
            ScalarType.Int64 => MPI.Unsafe.MPI_LONG_LONG,
            _ => throw new ArgumentException($"all-reduce of {tensor.dtype} tensors is not supported (float32, float64, int64)"),
        };
        var data = TensorMemory.Pointer(tensor);
        _busy.Start();
        try
        {
            foreach (var (offset, count) in TensorMemory.Chunks(tensor.NumberOfElements))
                Check(MPI.Unsafe.MPI_Allreduce(InPlace, data + (nint)(offset * tensor.ElementSize), count, type, MPI.Unsafe.MPI_SUM, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Allreduce");
        }
        finally { _busy.Stop(); }
    }

    public void Broadcast(Tensor tensor, int root)
    {
        var data = TensorMemory.Pointer(tensor);
        long bytes = tensor.NumberOfElements * tensor.ElementSize;
        _busy.Start();
        try
        {
            foreach (var (offset, count) in TensorMemory.Chunks(bytes))
                Check(MPI.Unsafe.MPI_Bcast(data + (nint)offset, count, MPI.Unsafe.MPI_BYTE, root, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Bcast");
        }
        finally { _busy.Stop(); }
    }

    /// <summary>End every rank of the job (MPI_Abort) with <paramref name="exitCode"/>.</summary>
    public void Abort(int exitCode) => MPI.Unsafe.MPI_Abort(MPI.Unsafe.MPI_COMM_WORLD, exitCode);

    static void Check(int code, string call)
    {
        if (code != 0) throw new InvalidOperationException($"{call} failed with MPI error {code}");
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        MPI.Unsafe.MPI_Finalize();
    }
}

/// <summary>The data pointer of a dense CPU tensor, for transports that take raw memory.</summary>
static class TensorMemory
{
    [DllImport("LibTorchSharp")]
    static extern IntPtr THSTensor_data(IntPtr handle);

    public static IntPtr Pointer(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU) throw new ArgumentException($"MPI collectives take CPU tensors; this one is on {tensor.device}");
        if (!tensor.is_contiguous()) throw new ArgumentException("MPI collectives take contiguous tensors");
        var pointer = THSTensor_data(tensor.Handle);
        if (pointer == IntPtr.Zero && tensor.NumberOfElements > 0) throw new InvalidOperationException("the tensor has no data pointer");
        return pointer;
    }

    /// <summary>MPI counts are int: split a length into chunks of at most 2^30 elements.</summary>
    public static IEnumerable<(long Offset, int Count)> Chunks(long length)
    {
        const long Max = 1L << 30;
        for (long offset = 0; offset < length; offset += Max)
            yield return (offset, (int)Math.Min(Max, length - offset));
    }
}
