using System.Globalization;
using System.Runtime.CompilerServices;
using Peft.Abstractions;
using Peft.Abstractions.Distributed;
using Peft.Abstractions.Optimization;
using Peft.Host.Cli;
using TorchSharp.Modules;

namespace Peft.Host.Distributed;

/// <summary>
/// How <c>peft train</c> finds its ranks. MPICH's <c>mpiexec</c> (Hydra) starts every rank with <c>PMI_RANK</c> and
/// <c>PMI_SIZE</c> in its environment; only then (and only with more than one rank) is MPI loaded. A plain
/// <c>peft train</c> never touches MPI.NET or libmpich, so it needs no MPI installed.
/// </summary>
public static class DistributedLaunch
{
    public const string RankVariable = "PMI_RANK", SizeVariable = "PMI_SIZE";

    /// <summary>True when this process is one of several ranks started by MPICH's mpiexec.</summary>
    public static bool LaunchedByMpiexec(out int size)
    {
        size = 1;
        return int.TryParse(Environment.GetEnvironmentVariable(SizeVariable), NumberStyles.Integer, CultureInfo.InvariantCulture, out size) && size > 1;
    }

    public static DataParallelism FromEnvironment(DistributedOptions options)
    {
        if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is { } ompi && ompi != "1")
            throw new CliException($"started by Open MPI's mpiexec ({ompi} ranks): peft speaks MPICH's ABI only; launch with MPICH's mpiexec (Debian: mpiexec.mpich, package mpich)");
        if (!LaunchedByMpiexec(out _)) return DataParallelism.Single;
        IGradientCommunicator communicator;
        try { communicator = StartMpi(); }
        catch (DllNotFoundException e) { throw new CliException($"launched by mpiexec ({SizeVariable}={Environment.GetEnvironmentVariable(SizeVariable)}) but MPI cannot be loaded: {e.Message}"); }
        return new DataParallelism(communicator, options.BucketBytes, options.DirectBytes);
    }

    // Kept out of line so that MPI.NET (and libmpich) are loaded only when this runs.
    [MethodImpl(MethodImplOptions.NoInlining)]
    static IGradientCommunicator StartMpi() => MpiCommunicator.Start();

    /// <summary>
    /// The optimizer a data-parallel run steps: the strategy's own (every rank holds the whole state), or under
    /// <c>distributed:zero = 1</c> a <see cref="ZeroShardedOptimizer"/> over per-rank optimizers built by the same strategy.
    /// An optimizer that updates inside the backward pass (GaLore layer-wise) cannot wait for the all-reduce and is refused.
    /// </summary>
    public static IPeftOptimizer Optimizer(DataParallelism parallel, DistributedOptions options, IPeftOptimizer composed, IOptimizerStrategy strategy, Microsoft.Extensions.Configuration.IConfiguration optimizerSection, bool optimizerTrainsQuantizedBase,
                                           IReadOnlyList<(string Name, Parameter Parameter)> trainable,
                                           Func<IReadOnlyList<(string Name, Parameter Parameter)>, IPeftOptimizer> createForShard)
    {
        if (!parallel.Enabled) return composed;
        // an IBackwardStepOptimizer is told about each step; only a layer-wise one also updates inside the backward pass
        if (composed is IBackwardStepOptimizer && string.Equals(optimizerSection["layerwise"], "true", StringComparison.OrdinalIgnoreCase))
            throw new PeftConfigurationException("optimizer:layerwise", "true",
                $"makes optimizer '{strategy.Name}' update parameters during the backward pass, before the gradients of {parallel.WorldSize} ranks can be all-reduced; set it to false for data-parallel training");
        if (optimizerTrainsQuantizedBase)
            throw new PeftConfigurationException("optimizer", strategy.Name,
                $"trains the quantized base weights itself, outside the trainable parameters whose gradients the {parallel.WorldSize} ranks all-reduce; train such a run in one process");
        if (options.Zero == 0) return composed;
        composed.Dispose();
        return new ZeroShardedOptimizer(trainable, parallel.Communicator, createForShard, options.BucketBytes);
    }

    /// <summary>The log file of a rank other than 0: <c>output:dir/logs/rank-R.log</c>.</summary>
    public static TextWriter RankLog(string outputDirectory, int rank)
    {
        var dir = Path.Combine(outputDirectory, "logs");
        Directory.CreateDirectory(dir);
        return new StreamWriter(Path.Combine(dir, $"rank-{rank}.log"), append: false) { AutoFlush = true };
    }

    /// <summary>How long a failing rank waits between writing its error and aborting the job.</summary>
    const int AbortGraceMilliseconds = 500;

    /// <summary>On a fatal error of one rank: say so on stderr, then end every rank of the job (MPI_Abort) so none waits forever.</summary>
    public static void AbortJob(DataParallelism parallel, TextWriter error, string message, int exitCode)
    {
        error.WriteLine($"peft train: rank {parallel.Rank} of {parallel.WorldSize}: {message}; stopping every rank");
        error.Flush();
        // MPI_Abort makes mpiexec tear the job down at once; under load its stdio forwarder could drop the line just
        // written (a fresh-clone test saw an empty stderr). The job is ending anyway: give the line time to get out.
        Thread.Sleep(AbortGraceMilliseconds);
        if (parallel.Communicator is MpiCommunicator mpi) mpi.Abort(exitCode);
    }
}
