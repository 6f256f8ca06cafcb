using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Host.Adapters;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// DoRA through the real host: the dora plugin loaded from the test output's plugins/ folder (with its private copy
/// of the LoRA assembly), `peft train` on stories260K, and the adapter folder read back by eval / merge, which pick
/// the DoRA method from use_dora without being told.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class DoraEndToEndTests(Stories260KFixture fx)
{
    const string EvalText =
        "Once upon a time, there was a little girl named Lily. She loved to play outside.\n\n" +
        "Tom had a red ball. He gave it to his friend Sam. Sam was happy!";

    static (int Code, string Out, string Err) Peft(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(args, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    static double JsonLoss(string stdout) =>
        JsonNode.Parse(stdout.TrimEnd().Split('\n')[^1])!["loss"]!.GetValue<double>();

    string Train(string outDir, string methodJson, string quantizationJson = "null")
    {
        var config = Path.Combine(fx.NewDir("cfg"), "train.json");
        Directory.CreateDirectory(Path.GetDirectoryName(config)!);
        File.WriteAllText(config, $$"""
        {
          "model": { "path": {{JsonValue.Create(fx.ModelDir).ToJsonString()}} },
          "quantization": {{quantizationJson}},
          "method": {{methodJson}},
          "data": { "path": {{JsonValue.Create(TestData.Repo("alpaca_libre/alpaca_libre_ok.jsonl")).ToJsonString()}},
                    "seq_len": 128, "validation_fraction": 0.05, "max_rows": 200 },
          "training": { "seed": 7, "batch_size": 4, "max_steps": 8, "learning_rate": 0.005, "lr_scheduler": "cosine",
                        "warmup_steps": 2, "eval_every": 4, "eval_batches": 4, "checkpoint_every": 0, "log_every": 1 },
          "output": { "dir": {{JsonValue.Create(outDir).ToJsonString()}} }
        }
        """.Replace("\"quantization\": null,", ""));
        var r = Peft("train", "--config", config);
        r.Code.Should().Be(0, r.Err + r.Out);
        return r.Out;
    }

    static List<double> EvalLosses(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject())
            .Where(m => m.ContainsKey("eval_loss") && (int)m["step"]! > 0).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();

    const string DoraMethod = """{ "name": "dora", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }""";

    [Fact]
    public void Dora_trains_on_stories260K_and_its_PEFT_adapter_round_trips_merges_and_evaluates_the_same()
    {
        var outDir = fx.NewDir("dora");
        Train(outDir, DoraMethod);

        // held-out loss falls
        var evals = EvalLosses(outDir);
        evals.Should().HaveCount(2);
        evals[1].Should().BeLessThan(evals[0]);

        // PEFT's DoRA format: peft_type LORA, use_dora true, A, B and the magnitude (out,) per module
        var adapterDir = Path.Combine(outDir, "adapter");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!.AsObject();
        config["peft_type"]!.GetValue<string>().Should().Be("LORA");
        config["use_dora"]!.GetValue<bool>().Should().BeTrue();
        var weightsPath = Path.Combine(adapterDir, "adapter_model.safetensors");
        var infos = Safetensors.ReadHeader(weightsPath).Tensors;
        infos.Should().HaveCount(5 * 7 * 3);
        var magnitude = infos.Single(i => i.Name == "base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector");
        magnitude.Shape.Should().Equal(fx.Model.Config.IntermediateSize);

        // load through the real plugin catalog: the DoRA method is chosen from use_dora, tensors are bit-identical,
        // and saving again writes the same bytes
        using (var catalog = PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build()))
        using (var model = HfModelFolder.Load(fx.ModelDir))
        {
            var adapter = PeftAdapterFolder.Load(adapterDir, model, catalog.Services.GetServices<IPeftMethod>());
            adapter.MethodName.Should().Be("dora");
            var file = Safetensors.Load(weightsPath);
            var state = adapter.GetStateDict();
            state.Keys.Should().BeEquivalentTo(file.Keys.Select(k => k["base_model.model.".Length..]));
            foreach (var (key, t) in file)
            {
                state[key["base_model.model.".Length..]].bytes.ToArray().Should().Equal(t.bytes.ToArray(), key);
                t.Dispose();
            }
            var again = fx.NewDir("again");
            PeftAdapterFolder.Save(adapter, again, fx.ModelDir);
            File.ReadAllBytes(Path.Combine(again, "adapter_model.safetensors")).Should().Equal(File.ReadAllBytes(weightsPath));
        }

        // eval with the adapter (DoRA picked automatically) equals eval of the merged model
        var data = Path.Combine(fx.NewDir("data"), "eval.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, EvalText);
        var merged = fx.NewDir("merged");
        var m = Peft("merge", "--model", fx.ModelDir, "--adapter", adapterDir, "--out", merged);
        m.Code.Should().Be(0, m.Err);
        var withAdapter = Peft("eval", "--model", fx.ModelDir, "--adapter", adapterDir, "--data", data, "--json");
        withAdapter.Code.Should().Be(0, withAdapter.Err);
        var mergedLoss = JsonLoss(Peft("eval", "--model", merged, "--data", data, "--json").Out);
        var baseLoss = JsonLoss(Peft("eval", "--model", fx.ModelDir, "--data", data, "--json").Out);
        mergedLoss.Should().BeApproximately(JsonLoss(withAdapter.Out), 1e-5);
        Math.Abs(baseLoss - mergedLoss).Should().BeGreaterThan(1e-4, "the trained DoRA adapter changes the model");
    }
}
