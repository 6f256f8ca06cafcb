using System.Runtime.CompilerServices;
using TorchSharp;

namespace Peft.Contract.Tests;

/// <summary>One LibTorch intra-op thread per test process (xunit runs test classes in parallel on a small machine).</summary>
internal static class TorchThreads
{
    [ModuleInitializer]
    internal static void UseOneThread() => torch.set_num_threads(1);
}
