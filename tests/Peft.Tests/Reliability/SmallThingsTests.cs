using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Peft.Host.Training;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>Issue 7 item 10: small things a user sees.</summary>
[Collection(Stories260KCollection.Name)]
public sealed class SmallThingsTests(Stories260KFixture fx)
{
    [Fact]
    public void The_adapter_names_its_base_model_as_given_not_by_this_machines_absolute_path()
    {
        var run = $"small-{Guid.NewGuid():N}";
        var config = RunKit.WriteConfig(Path.Combine(fx.Root, run + "-cfg"), Path.GetFileName(fx.ModelDir), run, maxSteps: 1, checkpointEvery: 0);
        var r = PeftProcess.Run(fx.Root, "train", "--config", config);
        r.Code.Should().Be(0, r.ToString());
        var adapterConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(fx.Root, run, "adapter", "adapter_config.json")))!;
        adapterConfig["base_model_name_or_path"]!.GetValue<string>().Should().Be(Path.GetFileName(fx.ModelDir), "PEFT writes the model id or the path as given");
    }

    [Fact]
    public void The_top_level_help_does_not_advertise_methods_and_points_to_peft_plugins()
    {
        var r = RunKit.Peft("--help");
        r.Code.Should().Be(0);
        r.Out.Should().NotContain("DoRA").And.NotContain("GaLore").And.Contain("peft plugins");
    }

    [Fact]
    public void Generate_reports_the_tokens_and_tokens_per_second_its_help_promises()
    {
        var r = RunKit.Peft("generate", "--model", fx.ModelDir, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "56");
        r.Code.Should().Be(0, r.Err);
        r.Err.Should().MatchRegex(@"^generate: 56 tokens in \d+\.\d\d s \(\d+\.\d tokens/s\)\n$");
    }

    /// <summary>
    /// The live progress display at 80 and 70 columns, in a real pseudo-terminal (util-linux <c>script</c>, the size
    /// set with <c>stty</c>): the terminal's final screen holds the last bar state once, as one line, before the
    /// summary and "done:", and no fragment of any earlier bar state.
    /// </summary>
    [Theory]
    [InlineData(80)]
    [InlineData(70)]
    public void The_progress_bar_leaves_no_fragments_at_80_and_70_columns_and_ends_before_done(int columns)
    {
        var work = fx.NewDir($"tty{columns}");
        var run = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, fx.ModelDir, run, maxSteps: 4, checkpointEvery: 2);
        var log = Path.Combine(work, "tty.log");
        static string Quote(string s) => "'" + s.Replace("'", "'\\''") + "'";
        var command = $"stty cols {columns} rows 24; exec dotnet {Quote(PeftProcess.HostDll)} train --config {Quote(config)}";
        var psi = new ProcessStartInfo("script") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in new[] { "-q", "-e", "-c", command, log }) psi.ArgumentList.Add(a);
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("PEFT_", StringComparison.OrdinalIgnoreCase)).ToList()) psi.Environment.Remove(key);
        psi.Environment["TERM"] = "xterm-256color";
        using (var p = Process.Start(psi)!)
        {
            p.StandardInput.Close();
            var stdout = p.StandardOutput.ReadToEndAsync();
            p.StandardError.ReadToEnd();
            p.WaitForExit(300_000).Should().BeTrue("the run finishes");
            p.ExitCode.Should().Be(0, stdout.Result);
        }
        var raw = TerminalScreen.Decode(File.ReadAllBytes(log));
        raw = raw[(raw.IndexOf('\n') + 1)..];                      // script's own header line
        if (raw.LastIndexOf("\nScript done", StringComparison.Ordinal) is var end and >= 0) raw = raw[..end];
        raw.Should().Contain("\u001b[2K", "the live display ran (the output was a terminal)");

        var screen = TerminalScreen.Render(raw, columns);
        var text = string.Join("\n", screen);
        var barLines = screen.Where(l => l.Contains("tok/s") || l.Contains('━') || Regex.IsMatch(l, @"step \d+/\d+  loss")).ToList();
        barLines.Should().ContainSingle("the bar's earlier states were erased, not left behind:\n" + text);
        barLines[0].Should().MatchRegex(@"^step 4/4  loss \d+\.\d{4}  lr .* 100% ");
        barLines[0].Length.Should().BeLessThan(columns, "the status line never wraps");
        int bar = screen.ToList().IndexOf(barLines[0]);
        int done = screen.ToList().FindIndex(l => l.StartsWith("done: 4 steps", StringComparison.Ordinal));
        done.Should().BeGreaterThan(bar, "the final bar state comes before 'done:':\n" + text);
        screen.Skip(bar + 1).Should().Contain(l => l.StartsWith("trainable parameters:", StringComparison.Ordinal), "the final summary follows the bar");
        foreach (var line in screen)
            line.Should().NotMatchRegex(@"\S.*step \d+/\d+  loss", "no bar fragment sits behind other text:\n" + text);
    }

    /// <summary>
    /// The step-0 evaluation (before training) is the first point of the eval curve: it is in metrics.jsonl as step 0,
    /// which is what loss_curve.png draws. And final_loss in training_summary.json is the last loss printed (and the
    /// last training line of metrics.jsonl), named with the steps it averages; last_step_loss is the final step alone.
    /// </summary>
    [Fact]
    public void The_step_0_eval_is_on_the_loss_curve_and_final_loss_is_the_last_printed_loss()
    {
        var work = fx.NewDir("curve");
        var run = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, fx.ModelDir, run, maxSteps: 5, checkpointEvery: 0);
        var r = PeftProcess.Run(work, "train", "--config", config, "--set", "training:log_every=3");
        r.Code.Should().Be(0, r.ToString());

        var step0 = Regex.Match(r.Out, @"^step 0: eval loss (\d+\.\d{4}) over (\d+) tokens", RegexOptions.Multiline);
        step0.Success.Should().BeTrue(r.Out);
        var (train, eval) = MetricsLog.ReadCurves(Path.Combine(run, MetricsLog.FileName));
        eval.Should().NotBeEmpty();
        eval[0].Step.Should().Be(0, "the baseline evaluation is logged at step 0");
        eval[0].Loss.ToString("0.0000", CultureInfo.InvariantCulture).Should().Be(step0.Groups[1].Value);
        File.Exists(Path.Combine(run, LossCurvePlot.FileName)).Should().BeTrue();

        var printed = Regex.Matches(r.Out, @"^step (\d+)/5 \| loss (\d+\.\d{4})", RegexOptions.Multiline);
        printed.Select(m => m.Groups[1].Value).Should().Equal(["3", "5"], "log_every 3, and the final step");
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "training_summary.json")))!;
        double finalLoss = summary["final_loss"]!.GetValue<double>();
        finalLoss.ToString("0.0000", CultureInfo.InvariantCulture).Should().Be(printed[^1].Groups[2].Value, "final_loss is the last printed loss");
        finalLoss.Should().Be(train[^1].Loss, "and the last training line of metrics.jsonl");
        summary["final_loss_steps"]!.AsArray().Select(n => n!.GetValue<int>()).Should().Equal([4, 5], "the last line averages steps 4 and 5");
        summary["last_step_loss"]!.GetValue<double>().Should().BeGreaterThan(0, "the final step's own loss is kept under its own name");
        r.Out.Should().Contain($"done: 5 steps (final loss {printed[^1].Groups[2].Value}, mean of steps 4-5)");
    }
}
