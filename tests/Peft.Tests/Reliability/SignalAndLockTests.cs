using System.Diagnostics;
using System.Text.Json.Nodes;
using Peft.Host.Training;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 items 2 and 3, with real processes: SIGTERM saves a checkpoint and exits 143 (like SIGINT, 130), a second
/// run on the same output folder is refused while the first holds its lock, and a lock left by a dead process is
/// taken over.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class SignalAndLockTests(Stories260KFixture fx)
{
    static int LastLoggedStep(string output)
    {
        var metrics = Path.Combine(output, "metrics.jsonl");
        if (!File.Exists(metrics)) return 0;
        try
        {
            return File.ReadAllLines(metrics).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!["step"]!.GetValue<int>()).DefaultIfEmpty(0).Max();
        }
        catch (IOException) { return 0; }
        catch (System.Text.Json.JsonException) { return 0; } // a line being written
    }

    static void Signal(int pid, string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{signal} {pid}") { UseShellExecute = false })!;
        kill.WaitForExit();
        kill.ExitCode.Should().Be(0);
    }

    [Theory]
    [InlineData("TERM", 143)]
    [InlineData("INT", 130)]
    public void A_stop_signal_saves_a_checkpoint_and_exits_with_the_conventional_code_and_the_folder_is_locked_meanwhile(string signal, int expectedCode)
    {
        var work = fx.NewDir("signal");
        var output = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, fx.ModelDir, output, maxSteps: 5000, checkpointEvery: 0);
        using var first = Process.Start(PeftProcess.StartInfo(work, ["train", "--config", config]))!;
        var stdout = first.StandardOutput.ReadToEndAsync();
        var stderr = first.StandardError.ReadToEndAsync();
        try
        {
            var clock = Stopwatch.StartNew();
            while (LastLoggedStep(output) < 2 && !first.HasExited && clock.Elapsed < TimeSpan.FromMinutes(3)) Thread.Sleep(100);
            first.HasExited.Should().BeFalse(stderr.IsCompleted ? stderr.Result : "");
            File.Exists(Path.Combine(output, RunLock.FileName)).Should().BeTrue();

            // a second run on the same folder while the first trains
            var metricsBefore = File.ReadAllText(Path.Combine(output, "metrics.jsonl"));
            var second = PeftProcess.Run(work, "train", "--config", config, "--overwrite");
            RunKit.ShouldBeACleanRefusal(second.Code, second.Err, "in use by another peft train", $"pid {first.Id}");
            second.Out.Should().BeEmpty();
            File.ReadAllText(Path.Combine(output, "metrics.jsonl")).Should().StartWith(metricsBefore, "the refused run wrote nothing into the first one's log");

            Signal(first.Id, signal);
            first.WaitForExit(120_000).Should().BeTrue();
        }
        finally
        {
            if (!first.HasExited) first.Kill(entireProcessTree: true);
        }
        first.WaitForExit();
        first.ExitCode.Should().Be(expectedCode, stdout.Result + stderr.Result);
        stderr.Result.Should().NotContain("   at ").And.Contain($"stopped by SIG{signal}");
        var checkpoints = CheckpointStore.List(output);
        checkpoints.Should().ContainSingle("the signal's checkpoint is the only one (checkpoint_every = 0)");
        var state = CheckpointStore.ReadState(checkpoints[0].Path);
        state.GlobalStep.Should().BeGreaterThanOrEqualTo(2);
        File.Exists(Path.Combine(output, RunLock.FileName)).Should().BeFalse("the lock is released on exit");

        // the interrupted run continues from there
        var resumed = RunKit.Peft("train", "--config", config, "--set", $"training:max_steps={state.GlobalStep + 1}", "--resume", "latest");
        resumed.Code.Should().Be(0, resumed.Err);
        resumed.Out.Should().Contain($"resumed at step {state.GlobalStep} of {state.GlobalStep + 1}");
    }

    [Fact]
    public void A_lock_left_by_a_dead_process_is_taken_over_with_a_note()
    {
        var work = fx.NewDir("stale");
        var output = Path.Combine(work, "run");
        Directory.CreateDirectory(output);
        using (var gone = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!) { gone.WaitForExit(); File.WriteAllText(Path.Combine(output, RunLock.FileName), $"{gone.Id} 2020-01-01T00:00:00.0000000Z\n"); }
        var config = RunKit.WriteConfig(work, fx.ModelDir, output, maxSteps: 1, checkpointEvery: 0);
        var r = PeftProcess.Run(work, "train", "--config", config);
        r.Code.Should().Be(0, r.ToString());
        r.Err.Should().Contain("took over a stale lock").And.Contain("no longer running");
        File.Exists(Path.Combine(output, "adapter", "adapter_model.safetensors")).Should().BeTrue();
        File.Exists(Path.Combine(output, RunLock.FileName)).Should().BeFalse();
    }
}
