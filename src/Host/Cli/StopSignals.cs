using System.Runtime.InteropServices;

namespace Peft.Host.Cli;

/// <summary>
/// SIGINT (Ctrl+C) and SIGTERM (what <c>timeout</c>, Docker, systemd and Slurm send) turned into a cancellation the
/// training loop honours at the next step boundary: it saves a checkpoint and returns, and the command exits with the
/// conventional code 128 + signal number (130 for SIGINT, 143 for SIGTERM). SIGHUP (the terminal went away) is
/// treated the same way (129). A second signal of the same kind is left to the runtime's default (the process ends).
/// </summary>
public sealed class StopSignals : IDisposable
{
    readonly CancellationTokenSource _cancel = new();
    readonly List<PosixSignalRegistration> _registrations = new();
    int _exitCode;

    public StopSignals()
    {
        Register(PosixSignal.SIGINT, 130);
        Register(PosixSignal.SIGTERM, 143);
        if (!OperatingSystem.IsWindows()) Register(PosixSignal.SIGHUP, 129);
    }

    void Register(PosixSignal signal, int exitCode)
    {
        try
        {
            _registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                if (_cancel.IsCancellationRequested) return; // the second one: let it end the process
                context.Cancel = true;
                Interlocked.CompareExchange(ref _exitCode, exitCode, 0);
                _cancel.Cancel();
            }));
        }
        catch (PlatformNotSupportedException) { }
    }

    public CancellationToken Token => _cancel.Token;

    /// <summary>The exit code for the signal received (130, 143, 129), or 130 when stopped another way.</summary>
    public int ExitCode => _exitCode == 0 ? 130 : _exitCode;

    /// <summary>Which signal stopped the run, for the last line.</summary>
    public string SignalName => ExitCode switch { 143 => "SIGTERM", 129 => "SIGHUP", _ => "SIGINT" };

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cancel.Dispose();
    }
}
