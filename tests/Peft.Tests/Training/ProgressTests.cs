using Peft.Host.Training;
using Peft.Tests.Data;
using Spectre.Console;
using static Peft.Tests.Training.TrainerTestKit;

namespace Peft.Tests.Training;

public class ProgressTests
{
    [Fact]
    public void Plain_progress_prints_one_line_per_logged_step_with_loss_lr_throughput_and_eta()
    {
        using var dir = new TempDirectory();
        var writer = new StringWriter();
        var model = TinyModel();
        var run = TrainerTestKit.Run(model, model.Train("lm_head.weight"), TinyData(), Options(o => { o.MaxSteps = 6; o.LogEvery = 3; }), dir.Path);
        Trainer.Run(new TrainingRun
        {
            Model = run.Model, TrainableParameters = run.TrainableParameters, Optimizer = run.Optimizer, Data = run.Data, Options = run.Options,
            OutputDirectory = run.OutputDirectory, Output = run.Output, Progress = new PlainTrainingProgress(writer), WriteLossCurve = false,
        });
        var lines = writer.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var stepLines = lines.Where(l => l.StartsWith("step ") && l.Contains("| loss ")).ToList();
        stepLines.Should().HaveCount(2);
        stepLines[0].Should().MatchRegex(@"^step 3/6 \| loss \d+\.\d{4} \| lr 1e-02 \| grad_norm [\d.]+ \| \d+ tok/s \| elapsed \d\d:\d\d \| eta \d\d:\d\d");
        stepLines[1].Should().StartWith("step 6/6");
        lines.Should().Contain(l => l.StartsWith("trainable parameters: ") && l.Contains("optimizer state allocated at the first step"));
        lines.Should().Contain(l => l.StartsWith("trainable parameters: ") && l.Contains("optimizer state 10.38 KiB"), "the final summary measures the AdamW state of lm_head: 1,328 × (4 + 4) bytes + an 8-byte step");
        lines[^1].Should().StartWith("done: 6 steps");
    }

    [Fact]
    public void Live_progress_renders_a_bar_with_step_and_loss()
    {
        using var dir = new TempDirectory();
        var writer = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.Yes, Interactive = InteractionSupport.Yes, ColorSystem = ColorSystemSupport.NoColors,
            Out = new AnsiConsoleOutput(writer),
        });
        var model = TinyModel();
        var run = TrainerTestKit.Run(model, model.Train("lm_head.weight"), TinyData(), Options(o => o.MaxSteps = 3), dir.Path);
        Trainer.Run(new TrainingRun
        {
            Model = run.Model, TrainableParameters = run.TrainableParameters, Optimizer = run.Optimizer, Data = run.Data, Options = run.Options,
            OutputDirectory = run.OutputDirectory, Output = run.Output, Progress = new LiveTrainingProgress(console), WriteLossCurve = false,
        });
        var output = writer.ToString();
        output.Should().Contain("step 3/3").And.Contain("loss ").And.Contain("tok/s").And.Contain("100%");
    }
}
