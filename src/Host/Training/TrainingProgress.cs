using System.Globalization;
using Spectre.Console;

namespace Peft.Host.Training;

/// <summary>What the trainer reports after each optimizer step.</summary>
public sealed record StepReport(int Step, int TotalSteps, int StartStep, double Loss, double LearningRate, double GradNorm,
    double TokensPerSecond, TimeSpan Elapsed, bool IsLogStep)
{
    /// <summary>Time left at the pace of this invocation so far.</summary>
    public TimeSpan? Eta => Step > StartStep ? TimeSpan.FromSeconds(Elapsed.TotalSeconds / (Step - StartStep) * (TotalSteps - Step)) : null;

    public string Describe()
    {
        var eta = Eta is { } left ? $" | eta {Format(left)}" : "";
        return string.Create(CultureInfo.InvariantCulture,
            $"step {Step}/{TotalSteps} | loss {Loss:0.0000} | lr {LearningRate:0.###e+00} | grad_norm {GradNorm:0.###} | {TokensPerSecond:0} tok/s | elapsed {Format(Elapsed)}{eta}");
    }

    static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t:mm\\:ss}" : t.ToString(@"mm\:ss", CultureInfo.InvariantCulture);
}

/// <summary>Receives step reports and messages while the loop runs.</summary>
public interface IProgressSink
{
    void OnStep(StepReport report);
    void WriteLine(string message);

    /// <summary>The loop is over: what is written from now on (the summary, "done:") comes after the progress display.</summary>
    void Finish() { }
}

/// <summary>Shows a run's progress. <see cref="Run"/> executes the training loop inside the display.</summary>
public interface ITrainingProgress
{
    void Run(int startStep, int totalSteps, Action<IProgressSink> loop);
}

public static class TrainingProgress
{
    /// <summary>Shows nothing (tests, embedding).</summary>
    public static ITrainingProgress Silent { get; } = new PlainTrainingProgress(TextWriter.Null);

    /// <summary>A live progress bar when the console is interactive, else plain lines on <paramref name="plainOutput"/> (stdout).</summary>
    public static ITrainingProgress ForConsole(TextWriter? plainOutput = null)
    {
        bool interactive = !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive && AnsiConsole.Profile.Capabilities.Ansi;
        return interactive ? new LiveTrainingProgress() : new PlainTrainingProgress(plainOutput ?? Console.Out);
    }
}

/// <summary>One line per logged step (and every message), for redirected output and CI logs.</summary>
public sealed class PlainTrainingProgress(TextWriter output) : ITrainingProgress
{
    public void Run(int startStep, int totalSteps, Action<IProgressSink> loop) => loop(new Sink(output));

    sealed class Sink(TextWriter output) : IProgressSink
    {
        public void OnStep(StepReport report)
        {
            if (report.IsLogStep) { output.WriteLine(report.Describe()); output.Flush(); }
        }

        public void WriteLine(string message) { output.WriteLine(message); output.Flush(); }
    }
}

/// <summary>
/// A one-row live status line: step, loss, lr, tokens/s, a bar, percentage, elapsed and ETA. It is redrawn in place
/// with a carriage return and "erase line", never with cursor-up, and is always shorter than the terminal width
/// (the bar shrinks, then the line is cut), so it never wraps: at any width (80, 70, 40 columns) no fragment of an
/// earlier state is left on the screen. Messages (evaluations, checkpoints) erase the status line, print, and
/// redraw it; after <see cref="IProgressSink.Finish"/> the last state stays as a plain line and later messages
/// (the summary, "done:") follow it.
/// </summary>
public sealed class LiveTrainingProgress(IAnsiConsole? console = null) : ITrainingProgress
{
    readonly IAnsiConsole _console = console ?? AnsiConsole.Console;

    public void Run(int startStep, int totalSteps, Action<IProgressSink> loop)
    {
        var sink = new Sink(_console, startStep, totalSteps);
        try { loop(sink); }
        finally { sink.Finish(); }
    }

    /// <summary>The status line for <paramref name="width"/> columns: at most width - 1 characters.</summary>
    public static string StatusLine(StepReport? report, int startStep, int totalSteps, int width, bool unicode)
    {
        int step = report?.Step ?? startStep;
        var left = report is null
            ? $"step {step}/{totalSteps}"
            : string.Create(CultureInfo.InvariantCulture,
                $"step {report.Step}/{report.TotalSteps}  loss {report.Loss:0.0000}  lr {report.LearningRate:0.##e+00}  {report.TokensPerSecond:0} tok/s");
        double fraction = totalSteps <= 0 ? 1 : Math.Clamp((double)step / totalSteps, 0, 1);
        var elapsed = report is null ? "" : " " + Clock(report.Elapsed);
        var eta = report?.Eta is { } e ? " eta " + Clock(e) : "";
        var right = string.Create(CultureInfo.InvariantCulture, $" {fraction * 100,3:0}%{elapsed}{eta}");
        int max = Math.Max(1, width - 1);
        if (report is not null && max - left.Length - right.Length - 1 < 8) // narrow: give up tok/s before the bar
            left = string.Create(CultureInfo.InvariantCulture, $"step {report.Step}/{report.TotalSteps}  loss {report.Loss:0.0000}  lr {report.LearningRate:0.##e+00}");
        int barWidth = Math.Min(30, max - left.Length - right.Length - 1);
        string line = barWidth >= 5
            ? left + " " + Bar(fraction, barWidth, unicode) + right
            : left + right;
        return line.Length <= max ? line : line[..max];
    }

    static string Bar(double fraction, int width, bool unicode)
    {
        int done = (int)Math.Round(fraction * width);
        return unicode ? new string('━', done) + new string('╺', Math.Min(1, width - done)) + new string(' ', Math.Max(0, width - done - 1))
                       : "[" + new string('#', Math.Max(0, done - 2)) + new string('.', Math.Max(0, width - 2 - Math.Max(0, done - 2))) + "]";
    }

    static string Clock(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t:mm\\:ss}" : t.ToString(@"mm\:ss", CultureInfo.InvariantCulture);

    sealed class Sink(IAnsiConsole console, int startStep, int totalSteps) : IProgressSink
    {
        StepReport? _last;
        bool _shown, _finished;
        TextWriter Out => console.Profile.Out.Writer;

        public void OnStep(StepReport report)
        {
            _last = report;
            if (!_finished) Draw();
        }

        public void WriteLine(string message)
        {
            Erase();
            Out.Write(message + "\n");
            if (!_finished) Draw();
            else Out.Flush();
        }

        public void Finish()
        {
            if (_finished) return;
            _finished = true;
            if (_shown) Out.Write("\n"); // the last state stays as a plain line
            _shown = false;
            Out.Flush();
        }

        void Draw()
        {
            Out.Write("\r\u001b[2K" + StatusLine(_last, startStep, totalSteps, console.Profile.Width, console.Profile.Capabilities.Unicode));
            Out.Flush();
            _shown = true;
        }

        void Erase()
        {
            if (_shown) Out.Write("\r\u001b[2K");
            _shown = false;
        }
    }
}
