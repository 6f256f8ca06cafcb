using System.Text.Json.Nodes;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 items 4 and 5: the output folder is checked before any work (no import, no model load, no step-0 eval),
/// a finished run stays finished, and a resume that changes the method is refused naming both values.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class RunFolderTests(Stories260KFixture fx)
{
    (string Work, string Config, string Output) CompletedRun(int steps = 4)
    {
        var work = fx.NewDir("runs");
        var output = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, fx.ModelDir, output, maxSteps: steps, rank: 8, checkpointEvery: 2);
        var r = RunKit.Peft("train", "--config", config);
        r.Code.Should().Be(0, r.Err);
        return (work, config, output);
    }

    [Fact]
    public void The_READMEs_second_run_is_refused_before_any_work_saying_what_to_do()
    {
        var (work, config, output) = CompletedRun();
        var before = RunKit.Snapshot(output);

        // README: peft train --config examples/quickstart.json --set training:max_steps=200 --set method:r=16
        var r = PeftProcess.Run(work, "train", "--config", config, "--set", "training:max_steps=200", "--set", "method:r=16");
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "already holds checkpoints up to step 4", "--resume latest", "output:dir", "--overwrite");
        r.Out.Should().BeEmpty("nothing is loaded or evaluated before the refusal (no step-0 eval, no import)");
        RunKit.Snapshot(output).Should().Equal(before);

        // the resume the message suggests, with the changed rank: refused before loading, naming both ranks
        var resumed = PeftProcess.Run(work, "train", "--config", config, "--set", "training:max_steps=200", "--set", "method:r=16", "--resume", "latest");
        RunKit.ShouldBeACleanRefusal(resumed.Code, resumed.Err, "method:r", "'16'", "r = 8");
        resumed.Out.Should().BeEmpty();
        RunKit.Snapshot(output).Should().Equal(before);

        // --overwrite starts over: a new run with r = 16, and nothing but peft train's own files went
        File.WriteAllText(Path.Combine(output, "my-notes.txt"), "mine");
        var fresh = RunKit.Peft("train", "--config", config, "--set", "method:r=16", "--overwrite");
        fresh.Code.Should().Be(0, fresh.Err);
        File.ReadAllText(Path.Combine(output, "my-notes.txt")).Should().Be("mine");
        JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter", "adapter_config.json")))!["r"]!.GetValue<int>().Should().Be(16);
    }

    [Fact]
    public void Resuming_a_finished_run_changes_nothing_and_raising_max_steps_continues_it()
    {
        var (work, config, output) = CompletedRun();
        var before = RunKit.Snapshot(output);
        var summaryBefore = File.ReadAllText(Path.Combine(output, "training_summary.json"));

        var again = PeftProcess.Run(work, "train", "--config", config, "--resume", "latest");
        again.Code.Should().Be(0, again.ToString());
        again.Out.Should().Contain("is complete: step 4 of 4").And.Contain("training:max_steps");
        RunKit.Snapshot(output).Should().Equal(before, "a finished run stays finished: not one byte changes");
        File.ReadAllText(Path.Combine(output, "training_summary.json")).Should().Be(summaryBefore);

        var more = RunKit.Peft("train", "--config", config, "--set", "training:max_steps=6", "--resume", "latest");
        more.Code.Should().Be(0, more.Err);
        more.Out.Should().Contain("resumed at step 4 of 6");
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "training_summary.json")))!;
        summary["final_step"]!.GetValue<int>().Should().Be(6);
        summary["final_loss"]!.GetValue<double>().Should().BeGreaterThan(0, "the continued run logged real losses");
    }

    [Fact]
    public void A_corrupt_checkpoint_and_a_lower_max_steps_are_refused_cleanly()
    {
        var (work, config, output) = CompletedRun();
        var state = Path.Combine(output, "checkpoints", "step-4", "trainer_state.json");
        var json = JsonNode.Parse(File.ReadAllText(state))!;
        json["global_step"] = -5;
        File.WriteAllText(state, json.ToJsonString());
        var corrupt = PeftProcess.Run(work, "train", "--config", config, "--resume", "latest");
        RunKit.ShouldBeACleanRefusal(corrupt.Code, corrupt.Err, "global_step = -5", "trainer_state.json");

        var lower = PeftProcess.Run(work, "train", "--config", config, "--set", "training:max_steps=1", "--resume", Path.Combine(output, "checkpoints", "step-2"));
        RunKit.ShouldBeACleanRefusal(lower.Code, lower.Err, "training:max_steps", "below the checkpoint's step 2");
    }

    [Fact]
    public void Max_steps_zero_is_refused_instead_of_meaning_three_epochs()
    {
        var work = fx.NewDir("zero");
        var config = RunKit.WriteConfig(work, fx.ModelDir, Path.Combine(work, "run"));
        var r = RunKit.Peft("train", "--config", config, "--set", "training:max_steps=0");
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "max_steps", "'0'", "training:epochs");
        Directory.Exists(Path.Combine(work, "run")).Should().BeFalse("a refused run leaves no output folder behind");
    }
}
