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

/// <summary>A Spectre.Console progress bar: step, loss, lr, tokens/s in the description; bar, percentage, elapsed and ETA columns.</summary>
public sealed class LiveTrainingProgress(IAnsiConsole? console = null) : ITrainingProgress
{
    readonly IAnsiConsole _console = console ?? AnsiConsole.Console;

    public void Run(int startStep, int totalSteps, Action<IProgressSink> loop)
    {
        _console.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                     new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape($"step {startStep}/{totalSteps}"), maxValue: Math.Max(1, totalSteps));
                task.Value = startStep;
                loop(new Sink(task, _console));
                task.Value = task.MaxValue;
            });
    }

    sealed class Sink(ProgressTask task, IAnsiConsole console) : IProgressSink
    {
        public void OnStep(StepReport report)
        {
            task.Description = Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"step {report.Step}/{report.TotalSteps}  loss {report.Loss:0.0000}  lr {report.LearningRate:0.##e+00}  {report.TokensPerSecond:0} tok/s"));
            task.Value = report.Step;
        }

        public void WriteLine(string message) => console.MarkupLine(Markup.Escape(message));
    }
}
