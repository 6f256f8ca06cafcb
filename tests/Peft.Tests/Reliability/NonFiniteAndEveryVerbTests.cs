using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Tests.Import;
using TorchSharp;

namespace Peft.Tests.Reliability;

/// <summary>
/// Issue 7 item 7: non-finite values never crash. An adapter with NaN in lora_B, or lora_alpha = 1e30, gets one line
/// and exit 2 from eval, generate and merge (not exit 134 and a stack trace, not exit 0 with truncated text). And every
/// verb, fed a corpus of bad input, returns a clean refusal: no exception escapes the command line.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class NonFiniteAndEveryVerbTests(Stories260KFixture fx)
{
    const string NanTensor = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";

    /// <summary>A trained adapter, one copy with NaN in one lora_B, one with lora_alpha 1e30.</summary>
    (string Good, string Nan, string HugeAlpha, string Work) Adapters()
    {
        var work = fx.NewDir("nonfinite");
        var output = Path.Combine(work, "run");
        var config = RunKit.WriteConfig(work, fx.ModelDir, output, maxSteps: 1, checkpointEvery: 0);
        var r = RunKit.Peft("train", "--config", config);
        r.Code.Should().Be(0, r.Err);
        var good = Path.Combine(output, "adapter");

        var nan = Path.Combine(work, "nan");
        PeftProcess.CopyDirectory(good, nan);
        var file = Path.Combine(nan, "adapter_model.safetensors");
        var tensors = Safetensors.Load(file);
        tensors.Should().ContainKey(NanTensor);
        var shape = tensors[NanTensor].shape;
        tensors[NanTensor].Dispose();
        tensors[NanTensor] = torch.full(shape, float.NaN);
        Safetensors.Save(file, tensors);
        foreach (var t in tensors.Values) t.Dispose();

        var huge = Path.Combine(work, "huge");
        PeftProcess.CopyDirectory(good, huge);
        var configFile = Path.Combine(huge, "adapter_config.json");
        var json = JsonNode.Parse(File.ReadAllText(configFile))!;
        json["lora_alpha"] = 1e30;
        File.WriteAllText(configFile, json.ToJsonString());
        return (good, nan, huge, work);
    }

    [Fact]
    public void Eval_generate_and_merge_report_non_finite_adapters_in_one_line_with_exit_2()
    {
        var (good, nan, huge, work) = Adapters();
        var data = TestData.Repo("tinystories/cs336_tinystories_sample.txt");
        var ok = PeftProcess.Run(work, "eval", "--model", fx.ModelDir, "--adapter", good, "--data", data, "--json");
        ok.Code.Should().Be(0, ok.ToString());

        var nanAdapter = nan;
        {
            var eval = PeftProcess.Run(work, "eval", "--model", fx.ModelDir, "--adapter", nanAdapter, "--data", data, "--json");
            RunKit.ShouldBeACleanRefusal(eval.Code, eval.Err, "non-finite", "tensor '");
            eval.Out.Should().BeEmpty("no loss is printed for a broken adapter");

            var gen = PeftProcess.Run(work, "generate", "--model", fx.ModelDir, "--adapter", nanAdapter, "--temperature", "0", "--max-new-tokens", "20");
            RunKit.ShouldBeACleanRefusal(gen.Code, gen.Err, "non-finite");
            gen.Out.Should().BeEmpty();

            var merged = Path.Combine(work, "merged-nan");
            var merge = PeftProcess.Run(work, "merge", "--model", fx.ModelDir, "--adapter", nanAdapter, "--out", merged);
            RunKit.ShouldBeACleanRefusal(merge.Code, merge.Err, "non-finite");
            Directory.Exists(merged).Should().BeFalse("nothing is written when the merge is refused");
        }

        // lora_alpha = 1e30: every weight is finite, but scaling·B·A·x reaches ~1e29 and mean(h²) in the next RMSNorm
        // overflows float32: a probe forward pass finds the layer, and every verb refuses in one line (merge writes nothing)
        var mergedHuge = Path.Combine(work, "merged-huge");
        foreach (var argv in new[]
                 {
                     new[] { "eval", "--model", fx.ModelDir, "--adapter", huge, "--data", data, "--json" },
                     ["generate", "--model", fx.ModelDir, "--adapter", huge, "--temperature", "0", "--max-new-tokens", "20"],
                     ["merge", "--model", fx.ModelDir, "--adapter", huge, "--out", mergedHuge],
                 })
        {
            var r = PeftProcess.Run(work, argv);
            RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "non-finite", "decoder layer", "lora_alpha");
            r.Out.Should().BeEmpty("no loss, text or merged model comes out: " + r);
        }
        Directory.Exists(mergedHuge).Should().BeFalse("the refused merge wrote nothing");

        // lora_alpha = 1e300 cannot even be a float32 scaling: refused when the adapter config is read, naming the key
        var beyond = Path.Combine(work, "beyond");
        PeftProcess.CopyDirectory(good, beyond);
        var beyondConfig = Path.Combine(beyond, "adapter_config.json");
        var beyondJson = JsonNode.Parse(File.ReadAllText(beyondConfig))!;
        beyondJson["lora_alpha"] = 1e300;
        File.WriteAllText(beyondConfig, beyondJson.ToJsonString());
        foreach (var argv in new[]
                 {
                     new[] { "eval", "--model", fx.ModelDir, "--adapter", beyond, "--data", data, "--json" },
                     ["generate", "--model", fx.ModelDir, "--adapter", beyond, "--temperature", "0", "--max-new-tokens", "20"],
                     ["merge", "--model", fx.ModelDir, "--adapter", beyond, "--out", Path.Combine(work, "merged-beyond")],
                 })
        {
            var r = PeftProcess.Run(work, argv);
            RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "'lora_alpha'", "1E+300", "float32");
        }
        var nanEval = PeftProcess.Run(work, "eval", "--model", fx.ModelDir, "--adapter", nan, "--data", data);
        nanEval.Err.Should().Contain(NanTensor.Replace("base_model.model.", "").Replace(".weight", ""), "the NaN tensor is named");
    }

    /// <summary>Bad input for every verb. Each must come back as exit 2 and one stderr line, never an exception.</summary>
    public static IEnumerable<object[]> Corpus()
    {
        yield return ["unknown-verb"];
        foreach (var verb in new[] { "import-llama2c", "generate", "eval", "train", "merge", "plugins" })
        {
            yield return [verb, "--no-such-option", "1"];
            yield return [verb, "stray-argument"];
        }
        yield return ["import-llama2c", "--checkpoint", "/nonexistent.bin", "--tokenizer", "/nonexistent.model", "--out", "/tmp/x"];
        yield return ["generate", "--model", "/nonexistent"];
        yield return ["generate", "--model", "{model}", "--temperature", "NaN"];
        yield return ["generate", "--model", "{model}", "--temperature", "-1"];
        yield return ["generate", "--model", "{model}", "--top-p", "2"];
        yield return ["generate", "--model", "{model}", "--max-new-tokens", "-5"];
        yield return ["generate", "--model", "{model}", "--seed", "1e99"];
        yield return ["generate", "--model", "{model}", "--adapter", "/nonexistent"];
        yield return ["eval", "--model", "{model}", "--data", "/nonexistent.txt"];
        yield return ["eval", "--model", "{model}", "--data", "{model}"];
        yield return ["eval", "--model", "{model}", "--data", "{empty}"];
        yield return ["eval", "--model", "{model}", "--data", "{garbage}"];
        yield return ["eval", "--model", "{model}", "--adapter", "{model}", "--data", "{text}"];
        yield return ["train"];
        yield return ["train", "--config", "/nonexistent.json"];
        yield return ["train", "--config", "{garbage}"];
        yield return ["train", "--config", "{text}"];
        yield return ["train", "--set", "training:max_steps=abc"];
        yield return ["train", "--set", "training:max_steps=0", "--set", "output:dir=/tmp/none"];
        yield return ["train", "--set", "method:target_modules=[q_proj,q_proj]"];
        yield return ["merge", "--model", "{model}", "--adapter", "/nonexistent", "--out", "/tmp/merged-never"];
        yield return ["merge", "--model", "{model}", "--adapter", "{model}", "--out", "{model}"];
        yield return ["plugins", "--plugins", "/nonexistent"];
        yield return ["quantize", "--model", "{model}", "--method", "nf4", "--out", "{model}"];
        yield return ["quantize", "--model", "{model}", "--method", "nf4", "--out", "{model}/inside"];
    }

    [Theory]
    [MemberData(nameof(Corpus))]
    public void Every_verb_refuses_bad_input_without_an_exception(params string[] template)
    {
        var dir = fx.NewDir("corpus");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "empty.txt"), "");
        File.WriteAllBytes(Path.Combine(dir, "garbage.json"), [0xff, 0xfe, 0x00, 0x7b, 0x22]);
        File.WriteAllText(Path.Combine(dir, "text.txt"), "Once upon a time.");
        var argv = template.Select(a => a
            .Replace("{model}", fx.ModelDir)
            .Replace("{empty}", Path.Combine(dir, "empty.txt"))
            .Replace("{garbage}", Path.Combine(dir, "garbage.json"))
            .Replace("{text}", Path.Combine(dir, "text.txt"))).ToArray();

        (int Code, string Out, string Err) r = default;
        var act = () => { r = RunKit.Peft(argv); };
        act.Should().NotThrow("peft " + string.Join(' ', argv));
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err);
    }
}
