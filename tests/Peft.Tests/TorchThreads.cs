using System.Runtime.CompilerServices;
using TorchSharp;

namespace Peft.Tests;

/// <summary>
/// xunit runs test classes in parallel on this 2-core machine; LibTorch's default of one OpenMP thread per core
/// then oversubscribes the CPU and small-tensor work slows down 20-50x. One intra-op thread per test process.
/// </summary>
internal static class TorchThreads
{
    [ModuleInitializer]
    internal static void UseOneThread() => torch.set_num_threads(1);
}
