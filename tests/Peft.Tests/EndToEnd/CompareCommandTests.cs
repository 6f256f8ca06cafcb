using System.Text.Json.Nodes;
using Peft.Host.Training;
using Peft.Tests.Import;
using Peft.Tests.Reliability;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// `peft compare` through the real executable: full fine-tuning, LoRA and DoRA each trained by its own `peft train`
/// child on stories260K, a method without an example and one whose plugin is not loaded reported as missing, and the
/// table's numbers read back against each run's own training_summary.json and metrics.jsonl.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class CompareCommandTests(Stories260KFixture fx)
{
    static string J(string s) => JsonValue.Create(s).ToJsonString();

    [Fact]
    public void Compare_trains_full_lora_and_dora_in_child_processes_and_tabulates_their_own_summaries()
    {
        var work = fx.NewDir("compare");
        Directory.CreateDirectory(work);
        // the methods are data: copies of the repository's examples, plus one naming a plugin nobody provides
        var examples = Path.Combine(work, "examples");
        Directory.CreateDirectory(examples);
        foreach (var name in new[] { "full", "quickstart", "dora" })
            File.Copy(Path.Combine(TestData.RepoRoot, "examples", name + ".json"), Path.Combine(examples, name + ".json"));
        File.WriteAllText(Path.Combine(examples, "ghost.json"), """{ "method": { "name": "ghost", "r": 4 } }""");

        var baseConfig = Path.Combine(work, "base.json");
        File.WriteAllText(baseConfig, $$"""
        {
          "model": { "path": {{J(fx.ModelDir)}} },
          "method": { "name": "lora", "r": 4 },
          "data": { "path": {{J(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl"))}}, "seq_len": 128, "validation_fraction": 0.1, "max_rows": 96 },
          "training": { "seed": 3, "batch_size": 4, "max_steps": 50, "lr_scheduler": "constant", "eval_every": 2, "eval_batches": 2,
                        "checkpoint_every": 0, "log_every": 1 },
          "output": { "dir": "ignored" }
        }
        """);
        var outDir = Path.Combine(work, "cmp");
        var r = PeftProcess.Run(work, ["compare", "--config", baseConfig, "--methods", "lora,dora,nosuch,ghost", "--steps", "4",
                                       "--examples", examples, "--out", outDir], timeout: TimeSpan.FromMinutes(8));
        r.Code.Should().Be(1, "two methods are missing: " + r);
        r.Out.Should().Contain("[1/5] full: training").And.Contain("[2/5] lora: training").And.Contain("[3/5] dora: training");

        var table = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "compare.json")))!.AsObject();
        var rows = table["rows"]!.AsArray().Select(x => x!.AsObject()).ToDictionary(x => x["method"]!.GetValue<string>());
        rows.Keys.Should().Equal("full", "lora", "dora", "nosuch", "ghost");
        rows["nosuch"]["status"]!.GetValue<string>().Should().Be("missing");
        rows["nosuch"]["note"]!.GetValue<string>().Should().Contain("nosuch.json");
        rows["ghost"]["status"]!.GetValue<string>().Should().Be("missing");
        rows["ghost"]["note"]!.GetValue<string>().Should().Contain("ghost");

        // the base model's held-out loss: the one full fine-tuning's run printed before training (4 decimals)
        double l0 = table["base_held_out_loss"]!.GetValue<double>();
        var step0 = File.ReadLines(Path.Combine(outDir, "logs", "full.log")).Single(l => l.StartsWith("step 0: eval loss"));
        l0.Should().BeApproximately(double.Parse(step0.Split(' ')[4], System.Globalization.CultureInfo.InvariantCulture), 5e-5);
        l0.Should().Be(rows["full"]["eval_curve"]![0]![1]!.GetValue<double>(), "the full run's step-0 line in metrics.jsonl is the same evaluation");

        var fullSummary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "runs", "full", "training_summary.json")))!;
        double fullLoss = fullSummary["final_eval_loss"]!.GetValue<double>();
        double fullRate = MedianRate(Path.Combine(outDir, "runs", "full"));
        foreach (var m in new[] { "full", "lora", "dora" })
        {
            var row = rows[m];
            row["status"]!.GetValue<string>().Should().Be("ok", m);
            var run = Path.Combine(outDir, "runs", m);
            var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "training_summary.json")))!;
            summary["final_step"]!.GetValue<int>().Should().Be(4, "--steps 4 overrides the base's max_steps");
            double loss = summary["final_eval_loss"]!.GetValue<double>();
            row["held_out_loss"]!.GetValue<double>().Should().Be(loss, m);
            foreach (var key in new[] { "trainable_parameters", "weight_bytes", "gradient_bytes", "optimizer_state_bytes" })
                row[key]!.GetValue<long>().Should().Be(summary[key]!.GetValue<long>(), $"{m} {key}");
            row["elapsed_s"]!.GetValue<double>().Should().Be(summary["elapsed_s"]!.GetValue<double>());
            double rate = MedianRate(run);
            row["tokens_per_s"]!.GetValue<double>().Should().Be(rate, m);
            row["tokens_per_s_relative"]!.GetValue<double>().Should().BeApproximately(rate / fullRate, 1e-12, m);
            row["improvement"]!.GetValue<double>().Should().BeApproximately(l0 - loss, 1e-12, m);
            row["quality_relative"]!.GetValue<double>().Should().BeApproximately((l0 - loss) / (l0 - fullLoss), 1e-12, m);
            row["peak_rss_bytes"]!.GetValue<long>().Should().BeGreaterThan(10L << 20, "the child's resident set was sampled");
            row["eval_curve"]!.AsArray().Select(p => p![0]!.GetValue<int>()).Should().Equal(0, 2, 4);
            if (summary["held_memory"]?["peak_process_bytes"] is { } peak)
                row["summary_peak_bytes"]!.GetValue<long>().Should().Be(peak.GetValue<long>(), $"{m}: the run's own peak figure");
        }
        rows["full"]["trainable_parameters"]!.GetValue<long>().Should().BeGreaterThan(rows["dora"]["trainable_parameters"]!.GetValue<long>());
        rows["dora"]["trainable_parameters"]!.GetValue<long>().Should().BeGreaterThan(rows["lora"]["trainable_parameters"]!.GetValue<long>(), "DoRA adds the magnitude vectors");
        // the method's tuned learning rate comes from its example, the budget from the base
        JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "configs", "full.json")))!["training"]!["learning_rate"]!.GetValue<double>().Should().Be(0.001);
        Directory.Exists(Path.Combine(outDir, "runs", "lora", "adapter")).Should().BeTrue();

        var md = File.ReadAllText(Path.Combine(outDir, "compare.md"));
        md.Should().Contain("| full | ok |").And.Contain("| lora | ok |").And.Contain("| dora | ok |").And.Contain("| nosuch | missing:").And.Contain("| ghost | missing:");
        File.ReadAllBytes(Path.Combine(outDir, "held_out_loss.png")).Take(4).Should().Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' });
        Directory.GetFileSystemEntries(work).Select(Path.GetFileName).Should().BeEquivalentTo(["examples", "base.json", "cmp"], "nothing but the result folder is left");

        // a folder holding something compare did not write is refused, untouched
        var foreign = Path.Combine(work, "foreign");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "notes.txt"), "mine");
        var refused = PeftProcess.Run(work, "compare", "--config", baseConfig, "--methods", "lora", "--steps", "1", "--examples", examples, "--out", foreign);
        RunKit.ShouldBeACleanRefusal(refused.Code, refused.Err, "notes.txt");
        File.ReadAllText(Path.Combine(foreign, "notes.txt")).Should().Be("mine");
    }

    static double MedianRate(string run)
    {
        var rates = File.ReadLines(Path.Combine(run, MetricsLog.FileName)).Select(l => JsonNode.Parse(l)!.AsObject())
            .Where(o => o.ContainsKey("tokens_per_s")).Select(o => o["tokens_per_s"]!.GetValue<double>()).Order().ToList();
        rates.Should().HaveCount(4);
        return (rates[1] + rates[2]) / 2;
    }

    [Fact]
    public void Bad_lists_are_refused_naming_the_value()
    {
        var r = RunKit.Peft("compare", "--config", "x.json", "--lora-ranks", "1,four");
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "--lora-ranks", "four");
        r = RunKit.Peft("compare", "--config", "x.json", "--methods", "lora,lora");
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "lora");
    }
}
