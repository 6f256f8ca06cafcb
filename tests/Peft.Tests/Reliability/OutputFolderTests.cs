using Peft.Host.Model;
using Peft.Tests.Import;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 item 1: no command deletes what it did not write. import-llama2c and merge write their folder under a
/// temporary sibling and rename it into place; a non-empty folder that is not a previous output of the same command
/// is refused unless --overwrite; a target that is, contains or is inside an input is refused always.
/// Through the real executable (a process): exit code, stderr, and the files before and after.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class OutputFolderTests(Stories260KFixture fx)
{
    string NewWorkDir()
    {
        var dir = fx.NewDir("work");
        Directory.CreateDirectory(dir);
        File.Copy(Stories260KFixture.Checkpoint, Path.Combine(dir, "stories260K.bin"));
        File.Copy(Stories260KFixture.TokenizerModel, Path.Combine(dir, "tok512.model"));
        return dir;
    }

    static string[] Import(string outDir, params string[] extra) =>
        ["import-llama2c", "--checkpoint", "stories260K.bin", "--tokenizer", "tok512.model", "--out", outDir, .. extra];

    [Fact]
    public void Import_refuses_a_folder_of_someone_elses_files_and_keeps_them_and_replaces_only_with_overwrite()
    {
        var work = NewWorkDir();
        var target = Path.Combine(work, "mine");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "thesis.tex"), "years of work");
        File.WriteAllText(Path.Combine(target, "config.json"), "{}");
        var before = RunKit.Snapshot(work);

        var r = PeftProcess.Run(work, Import("mine"));
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "'mine'", "'thesis.tex'", "--overwrite");
        RunKit.Snapshot(work).Should().Equal(before, "a refused import touches nothing");
        Directory.GetDirectories(work).Should().Equal([target], "no temporary folder is left beside it");

        var forced = PeftProcess.Run(work, Import("mine", "--overwrite"));
        forced.Code.Should().Be(0, forced.ToString());
        File.Exists(Path.Combine(target, "thesis.tex")).Should().BeFalse("--overwrite replaces the whole folder");
        File.Exists(Path.Combine(target, HfModelFolder.WeightsFile)).Should().BeTrue();
    }

    [Fact]
    public void Import_into_the_current_directory_or_above_its_input_is_refused_and_nothing_is_removed()
    {
        var work = NewWorkDir();
        File.WriteAllText(Path.Combine(work, "notes.txt"), "keep me");
        var before = RunKit.Snapshot(work);

        var dot = PeftProcess.Run(work, Import("."));
        RunKit.ShouldBeACleanRefusal(dot.Code, dot.Err, "'.'", "current directory");
        var dotForced = PeftProcess.Run(work, Import(".", "--overwrite"));
        RunKit.ShouldBeACleanRefusal(dotForced.Code, dotForced.Err, "current directory");

        var sub = Path.Combine(work, "in");
        Directory.CreateDirectory(sub);
        File.Copy(Path.Combine(work, "stories260K.bin"), Path.Combine(sub, "c.bin"));
        var parent = PeftProcess.Run(sub, ["import-llama2c", "--checkpoint", "c.bin", "--tokenizer", "../tok512.model", "--out", "..", "--overwrite"]);
        RunKit.ShouldBeACleanRefusal(parent.Code, parent.Err, "'..'");
        var itself = PeftProcess.Run(work, ["import-llama2c", "--checkpoint", "in/c.bin", "--tokenizer", "tok512.model", "--out", "in", "--overwrite"]);
        RunKit.ShouldBeACleanRefusal(itself.Code, itself.Err, "'in'", "contains the input given with --checkpoint");

        File.Delete(Path.Combine(sub, "c.bin"));
        Directory.Delete(sub);
        RunKit.Snapshot(work).Should().Equal(before);
    }

    [Fact]
    public void Import_replaces_its_own_previous_output_and_a_failed_import_leaves_it_whole()
    {
        var work = NewWorkDir();
        PeftProcess.Run(work, Import("model")).Code.Should().Be(0);
        var first = RunKit.Snapshot(Path.Combine(work, "model"));
        first.Keys.Should().Contain(["config.json", "model.safetensors", "tokenizer.model"]);

        var again = PeftProcess.Run(work, Import("model"));
        again.Code.Should().Be(0, "a folder holding only a model folder's files is a previous output: " + again.Err);
        RunKit.Snapshot(Path.Combine(work, "model")).Should().Equal(first, "the same import writes the same bytes");

        var bytes = File.ReadAllBytes(Path.Combine(work, "stories260K.bin"));
        File.WriteAllBytes(Path.Combine(work, "truncated.bin"), bytes[..(bytes.Length / 2)]);
        var broken = PeftProcess.Run(work, ["import-llama2c", "--checkpoint", "truncated.bin", "--tokenizer", "tok512.model", "--out", "model"]);
        RunKit.ShouldBeACleanRefusal(broken.Code, broken.Err, "truncated.bin");
        RunKit.Snapshot(Path.Combine(work, "model")).Should().Equal(first, "a failed import leaves the previous output as it was");
        Directory.GetDirectories(work).Select(Path.GetFileName).Should().Equal(["model"], "no temporary folder is left behind");
    }

    [Fact]
    public void Merge_never_writes_onto_its_adapter_or_model_and_refuses_foreign_files()
    {
        var work = fx.NewDir("merge");
        var model = Path.Combine(work, "model");
        PeftProcess.CopyDirectory(fx.ModelDir, model);
        var run = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, model, run, maxSteps: 1, checkpointEvery: 0);
        var train = RunKit.Peft("train", "--config", config);
        train.Code.Should().Be(0, train.Err);
        var adapter = Path.Combine(run, "adapter");
        var before = RunKit.Snapshot(work);

        var onAdapter = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "run/adapter", "--overwrite");
        RunKit.ShouldBeACleanRefusal(onAdapter.Code, onAdapter.Err, "'run/adapter' is the input given with --adapter");
        var aboveAdapter = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "run", "--overwrite");
        RunKit.ShouldBeACleanRefusal(aboveAdapter.Code, aboveAdapter.Err, "'run' contains the input given with --adapter");
        var insideModel = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "model/merged");
        RunKit.ShouldBeACleanRefusal(insideModel.Code, insideModel.Err, "'model/merged' is inside the input given with --model");
        RunKit.Snapshot(work).Should().Equal(before, "every refused merge left the adapter and the model as they were");

        Directory.CreateDirectory(Path.Combine(work, "merged"));
        File.WriteAllText(Path.Combine(work, "merged", "README.md"), "my notes");
        var foreign = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "merged");
        RunKit.ShouldBeACleanRefusal(foreign.Code, foreign.Err, "'README.md'", "--overwrite");
        File.ReadAllText(Path.Combine(work, "merged", "README.md")).Should().Be("my notes");

        var fresh = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "out/merged");
        fresh.Code.Should().Be(0, fresh.ToString());
        File.Exists(Path.Combine(work, "out", "merged", HfModelFolder.WeightsFile)).Should().BeTrue();
        var remerge = PeftProcess.Run(work, "merge", "--model", "model", "--adapter", "run/adapter", "--out", "out/merged");
        remerge.Code.Should().Be(0, "its own previous output is replaced: " + remerge.Err);
        File.Exists(Path.Combine(adapter, "adapter_model.safetensors")).Should().BeTrue();
    }

    [Fact]
    public void Quantize_follows_the_same_rules_temporary_sibling_foreign_files_and_inputs()
    {
        var work = fx.NewDir("quantize");
        var model = Path.Combine(work, "model");
        PeftProcess.CopyDirectory(fx.ModelDir, model);
        Directory.CreateDirectory(Path.Combine(work, "notes"));
        File.WriteAllText(Path.Combine(work, "notes", "thesis.tex"), "years of work");
        var before = RunKit.Snapshot(work);

        var onModel = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "model", "--overwrite");
        RunKit.ShouldBeACleanRefusal(onModel.Code, onModel.Err, "'model' is the input given with --model");
        var insideModel = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "model/nf4");
        RunKit.ShouldBeACleanRefusal(insideModel.Code, insideModel.Err, "'model/nf4' is inside the input given with --model");
        var aboveModel = PeftProcess.Run(work, "quantize", "--model", "model/../model", "--method", "nf4", "--out", ".", "--overwrite");
        RunKit.ShouldBeACleanRefusal(aboveModel.Code, aboveModel.Err, "current directory");
        var foreign = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "notes");
        RunKit.ShouldBeACleanRefusal(foreign.Code, foreign.Err, "'notes'", "'thesis.tex'", "--overwrite");
        RunKit.Snapshot(work).Should().Equal(before, "every refused quantize left the model and the notes as they were");

        var fresh = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "nf4");
        fresh.Code.Should().Be(0, fresh.ToString());
        var again = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "nf4");
        again.Code.Should().Be(0, "its own previous output is replaced: " + again.Err);
        Directory.GetFileSystemEntries(work).Select(Path.GetFileName).Order().Should().Equal(["model", "nf4", "notes"], "no temporary sibling is left");

        var overwrite = PeftProcess.Run(work, "quantize", "--model", "model", "--method", "nf4", "--out", "notes", "--overwrite");
        overwrite.Code.Should().Be(0, overwrite.ToString());
        File.Exists(Path.Combine(work, "notes", "thesis.tex")).Should().BeFalse("--overwrite replaces the whole folder");
        File.Exists(Path.Combine(work, "notes", HfModelFolder.ConfigFile)).Should().BeTrue();
    }
}
