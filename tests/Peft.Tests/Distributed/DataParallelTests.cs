using System.Diagnostics;
using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Tests.Import;
using Peft.Tests.Reliability;
using TorchSharp;

namespace Peft.Tests.Distributed;

/// <summary>
/// Issue 16 with real processes under MPICH's mpiexec: 2 ranks × batch B train exactly like 1 process × batch 2B
/// (LoRA and full fine-tuning), a run resumes on another rank count, ZeRO-1 halves the optimizer state each rank
/// holds without changing the losses (AdamW and GaLore), and a dead rank ends the job instead of hanging it.
/// </summary>
[Collection(DistributedCollection.Name)]
public sealed class DataParallelTests(Stories260KFixture fx)
{
    string Config(string work, string output, string method, int maxSteps, int checkpointEvery = 2, string optimizer = "", int zero = 0, int batch = 4)
    {
        Directory.CreateDirectory(work);
        var path = Path.Combine(work, $"train-{Guid.NewGuid():N}.json");
        var methodJson = method == "lora"
            ? """{ "name": "lora", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"] }"""
            : """{ "name": "full" }""";
        File.WriteAllText(path, $$"""
        {
          "model": { "path": {{JsonValue.Create(fx.ModelDir).ToJsonString()}} },
          "method": {{methodJson}},
          {{(optimizer.Length > 0 ? $"\"optimizer\": {optimizer}," : "")}}
          "data": { "path": {{JsonValue.Create(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl")).ToJsonString()}},
                    "seq_len": 128, "validation_fraction": 0.1, "max_rows": 96 },
          "training": { "seed": 3, "batch_size": {{batch}}, "max_steps": {{maxSteps}}, "learning_rate": 0.003, "lr_scheduler": "constant",
                        "eval_every": 0, "eval_batches": 1, "checkpoint_every": {{checkpointEvery}}, "log_every": 1, "num_threads": 1 },
          "distributed": { "zero": {{zero}}{{(method == "full" ? ", \"direct_kb\": 4" : "")}} },
          "output": { "dir": {{JsonValue.Create(output).ToJsonString()}} }
        }
        """);
        return path;
    }

    static string ResultFile(string output, string method) =>
        method == "lora" ? Path.Combine(output, "adapter", "adapter_model.safetensors") : Path.Combine(output, "model", "model.safetensors");

    static void SameWeights(string expectedFile, string actualFile, double tolerance)
    {
        var expected = Safetensors.Load(expectedFile);
        var actual = Safetensors.Load(actualFile);
        try
        {
            actual.Keys.Should().BeEquivalentTo(expected.Keys);
            foreach (var (name, e) in expected)
            {
                double diff = (e - actual[name]).abs().max().item<float>();
                diff.Should().BeLessThan(tolerance, $"tensor {name} of {actualFile}");
            }
        }
        finally { foreach (var t in expected.Values.Concat(actual.Values)) t.Dispose(); }
    }

    static void SameLosses(List<(int Step, double Loss)> expected, List<(int Step, double Loss)> actual, double tolerance)
    {
        actual.Select(l => l.Step).Should().Equal(expected.Select(l => l.Step));
        for (int i = 0; i < expected.Count; i++)
            actual[i].Loss.Should().BeApproximately(expected[i].Loss, tolerance, $"the loss of step {expected[i].Step}");
    }

    /// <remarks>
    /// LoRA's gradients are all small: they travel in flat buckets. Full fine-tuning runs with
    /// <c>distributed:direct_kb = 4</c>, so stories260K's 64 × 64 (16 KiB) and larger gradients are all-reduced in
    /// place on their own memory while the norm vectors go in a bucket: both paths must give the 1-process result.
    /// </remarks>
    [Theory]
    [InlineData("lora")]
    [InlineData("full")]
    public void Two_ranks_with_half_the_batch_each_train_like_one_process_with_the_whole_batch_and_resume_on_one(string method)
    {
        var work = fx.NewDir($"dp-{method}");
        string single = Path.Combine(work, "single"), ranks = Path.Combine(work, "ranks");
        var one = PeftProcess.Run(work, "train", "--config", Config(work, single, method, maxSteps: 4));
        one.Code.Should().Be(0, one.ToString());
        var two = MpiRun.Run(2, work, "train", "--config", Config(work, ranks, method, maxSteps: 4));
        two.Code.Should().Be(0, two.ToString());
        two.Out.Should().Contain("rank 0 of 2").And.Contain("global batch 4, 2 examples per rank");

        var losses = MpiRun.Losses(single);
        losses.Should().HaveCount(4);
        SameLosses(losses, MpiRun.Losses(ranks), 1e-4);
        SameWeights(ResultFile(single, method), ResultFile(ranks, method), 1e-4);

        // only rank 0 wrote the run's files; rank 1 wrote its own log
        File.ReadAllText(Path.Combine(ranks, "logs", "rank-1.log")).Should().Contain("rank 1 of 2").And.Contain("step 4/4");
        Directory.GetFiles(Path.Combine(ranks, "logs")).Select(Path.GetFileName).Should().Equal("rank-1.log");

        // a run checkpointed by 2 ranks resumes in 1 process and ends where the 1-process run ended
        var half = Path.Combine(work, "half");
        MpiRun.Run(2, work, "train", "--config", Config(work, half, method, maxSteps: 2)).Code.Should().Be(0);
        var resumed = PeftProcess.Run(work, "train", "--config", Config(work, half, method, maxSteps: 4), "--resume", "latest");
        resumed.Code.Should().Be(0, resumed.ToString());
        resumed.Out.Should().Contain("resumed at step 2 of 4");
        SameLosses(losses, MpiRun.Losses(half), 1e-4);
        SameWeights(ResultFile(single, method), ResultFile(half, method), 1e-4);
    }

    /// <remarks>
    /// Owners are assigned by parameter elements, so AdamW's state (2 floats per element) splits in halves; GaLore's
    /// projected states are smaller than their weights, so on this tiny model (whose unprojected embedding is a
    /// large share) its split is only roughly even: the largest shard is checked against <paramref name="maxShare"/>.
    /// </remarks>
    [Theory]
    [InlineData("lora", "", 0.6)]
    [InlineData("full", "", 0.6)]
    [InlineData("full", """{ "name": "galore", "rank": 8, "update_proj_gap": 2, "scale": 0.25, "proj_type": "std", "layerwise": false }""", 0.75)]
    public void Zero_1_holds_about_half_the_optimizer_state_per_rank_with_the_same_losses(string method, string optimizer, double maxShare)
    {
        var work = fx.NewDir($"zero-{method}");
        string whole = Path.Combine(work, "zero0"), sharded = Path.Combine(work, "zero1");
        var plain = MpiRun.Run(2, work, "train", "--config", Config(work, whole, method, maxSteps: 4, optimizer: optimizer));
        plain.Code.Should().Be(0, plain.ToString());
        var zero = MpiRun.Run(2, work, "train", "--config", Config(work, sharded, method, maxSteps: 4, optimizer: optimizer, zero: 1));
        zero.Code.Should().Be(0, zero.ToString());
        zero.Out.Should().Contain("ZeRO-1");

        SameLosses(MpiRun.Losses(whole), MpiRun.Losses(sharded), 1e-5);
        SameWeights(ResultFile(whole, method), ResultFile(sharded, method), 1e-5);
        // ZeRO-1 reduce-scatters the gradients and clips the shards: its global norm (one scalar all-reduce of the
        // owned squared norms) is the all-reduced run's, and it is above max_grad_norm, so the clipping was applied
        var norms = MpiRun.GradNorms(whole);
        var shardedNorms = MpiRun.GradNorms(sharded);
        shardedNorms.Select(n => n.Step).Should().Equal(norms.Select(n => n.Step));
        for (int i = 0; i < norms.Count; i++) shardedNorms[i].Norm.Should().BeApproximately(norms[i].Norm, 1e-4 * norms[i].Norm, $"the gradient norm of step {norms[i].Step}");
        if (method == "full") norms.Max(n => n.Norm).Should().BeGreaterThan(1.0, "max_grad_norm (1.0) clips a step of full fine-tuning");

        // bytes of the state tensors each rank holds (IPeftOptimizer.StateBytes, summed over its tensors)
        long unsharded0 = MpiRun.OptimizerBytes(plain.Out, 0), unsharded1 = MpiRun.OptimizerBytes(File.ReadAllText(Path.Combine(whole, "logs", "rank-1.log")), 1);
        long shard0 = MpiRun.OptimizerBytes(zero.Out, 0), shard1 = MpiRun.OptimizerBytes(File.ReadAllText(Path.Combine(sharded, "logs", "rank-1.log")), 1);
        unsharded1.Should().Be(unsharded0, "without ZeRO every rank holds the whole state");
        (shard0 + shard1).Should().BeCloseTo(unsharded0, (ulong)(unsharded0 / 50), "the shards add up to the whole state");
        ((double)shard0 / unsharded0).Should().BeInRange(1 - maxShare, maxShare);
        ((double)shard1 / unsharded0).Should().BeInRange(1 - maxShare, maxShare);

        // the checkpoint holds the whole (gathered) optimizer state: same tensors as the unsharded run's
        var keys = Safetensors.ReadHeader(Path.Combine(whole, "checkpoints", "step-4", "optimizer.safetensors")).Tensors.Select(t => t.Name).ToList();
        Safetensors.ReadHeader(Path.Combine(sharded, "checkpoints", "step-4", "optimizer.safetensors")).Tensors.Select(t => t.Name).Should().BeEquivalentTo(keys);
    }

    [Fact]
    public void A_single_process_without_mpiexec_trains_without_loading_MPI()
    {
        var work = fx.NewDir("dp-single");
        var output = Path.Combine(work, "run");
        Environment.GetEnvironmentVariable(Host.Distributed.DistributedLaunch.SizeVariable).Should().BeNull("the test runner is not an MPI rank");
        var (code, stdout, stderr) = RunKit.Peft("train", "--config", Config(work, output, "lora", maxSteps: 2, zero: 1));
        code.Should().Be(0, stderr);
        stdout.Should().NotContain("rank 0 of");
        Directory.Exists(Path.Combine(output, "logs")).Should().BeFalse();
        AppDomain.CurrentDomain.GetAssemblies().Select(a => a.GetName().Name).Should().NotContain("MPI", "MPI.NET is loaded only under mpiexec");
    }

    [Fact]
    public void A_global_batch_that_does_not_split_across_the_ranks_is_refused_naming_both_numbers()
    {
        var work = fx.NewDir("dp-batch");
        var output = Path.Combine(work, "run");
        var r = MpiRun.Run(2, work, "train", "--config", Config(work, output, "lora", maxSteps: 2, batch: 3));
        r.Code.Should().NotBe(0);
        r.Err.Should().Contain("training:batch_size").And.Contain("3 is not a multiple of 2");
        r.Err.Should().NotContain("   at ");
        File.Exists(Path.Combine(output, "metrics.jsonl")).Should().BeFalse();
    }

    [Fact]
    public void A_rank_that_dies_ends_the_job_within_seconds_and_the_last_checkpoint_resumes()
    {
        var work = fx.NewDir("dp-death");
        var output = Path.Combine(work, "run");
        var config = Config(work, output, "lora", maxSteps: 3000, checkpointEvery: 3);
        using var job = Process.Start(MpiRun.StartInfo(2, work, ["train", "--config", config]))!;
        var stdout = job.StandardOutput.ReadToEndAsync();
        var stderr = job.StandardError.ReadToEndAsync();
        var rankLog = Path.Combine(output, "logs", "rank-1.log");
        var clock = Stopwatch.StartNew();
        int? pid = null;
        while (clock.Elapsed < TimeSpan.FromMinutes(3) && !job.HasExited)
        {
            if (File.Exists(rankLog))
            {
                var text = File.ReadAllText(rankLog);
                var m = System.Text.RegularExpressions.Regex.Match(text, @"rank 1 of 2 \(pid (\d+)");
                if (m.Success && text.Contains("step 5/")) { pid = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture); break; }
            }
            Thread.Sleep(100);
        }
        pid.Should().NotBeNull($"rank 1 trains a few steps first\n{(job.HasExited ? stdout.Result + stderr.Result : "")}");
        Directory.Exists(Path.Combine(output, "checkpoints", "step-3")).Should().BeTrue();

        Process.GetProcessById(pid!.Value).Kill();   // SIGKILL: the rank dies without a word
        var killed = Stopwatch.StartNew();
        job.WaitForExit(TimeSpan.FromSeconds(30)).Should().BeTrue("rank 0 must not hang in the all-reduce of a dead peer");
        killed.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(30));
        job.WaitForExit();
        job.ExitCode.Should().NotBe(0);
        (stdout.Result + stderr.Result).Should().Contain("BAD TERMINATION").And.Contain($"PID {pid}");

        // the newest checkpoint written before the death resumes (same rank count), and the run completes
        int last = Host.Training.CheckpointStore.List(output)[^1].Step;
        var resumed = MpiRun.Run(2, work, "train", "--config", Config(work, output, "lora", maxSteps: last + 2, checkpointEvery: 3), "--resume", "latest");
        resumed.Code.Should().Be(0, resumed.ToString());
        resumed.Out.Should().Contain($"resumed at step {last} of {last + 2}");
        File.Exists(Path.Combine(output, "adapter", "adapter_model.safetensors")).Should().BeTrue();
    }
}
