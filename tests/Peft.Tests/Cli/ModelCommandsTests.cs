using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Evaluation;
using Peft.Host.Model;
using Peft.Tests.Import;
using Peft.Host.Commands;

namespace Peft.Tests.Cli;

[Collection(Stories260KCollection.Name)]
public sealed class ModelCommandsTests(Stories260KFixture fx)
{
    static (int Code, string Out, string Err) Run(params string[] argv)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(argv, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Import_then_generate_greedily_prints_exactly_the_authors_sample()
    {
        var dir = fx.NewDir("cli-import");
        var import = Run("import-llama2c", "--checkpoint", Stories260KFixture.Checkpoint, "--tokenizer", Stories260KFixture.TokenizerModel, "--out", dir);
        import.Code.Should().Be(0, import.Err);
        File.Exists(Path.Combine(dir, HfModelFolder.WeightsFile)).Should().BeTrue();

        var gen = Run("generate", "--model", dir, "--temperature", "0");
        gen.Code.Should().Be(0, gen.Err);
        gen.Out.Should().Be(Stories260KFixture.SampleFromNotes("-t 0.0") + "\n", "stdout holds only the text, then a newline, as llama2.c's run prints it");
    }

    [Fact]
    public void Generate_with_a_prompt_prints_the_prompt_and_the_continuation_like_llama2c()
    {
        // Reference: llama2.c run.c (HEAD of karpathy/llama2.c) built with gcc -O2:
        //   ./run stories260K.bin -z tok512.bin -t 0 -i "Once upon a time" -n 60
        // run.c feeds 60 positions and prints the token each one yields: 4 prompt tokens + 56 new ones; the text (then "\n"):
        const string expected = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
                                "One day, she saw a big, red ball. She wanted to play with it, but it was too high";
        var gen = Run("generate", "--model", fx.ModelDir, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "56");
        gen.Code.Should().Be(0, gen.Err);
        gen.Out.Should().Be(expected + "\n");
    }

    [Fact]
    public void Generate_samples_reproducibly_for_a_seed()
    {
        // llama2.c: ./run stories260K.bin -z tok512.bin -t 0.8 -p 0 -s 7 -n 60 -i "Lily liked"
        // (temperature 0.8 over the full distribution, seed 7); "Lily liked" is 3 tokens, so 60 - 3 = 57 new tokens.
        const string expected = "Lily liked to run and play with her toys. One day, Lily and Max were playing in the sun. " +
                                "They saw a rainbow with big, red ball. Lily was very thirsty. Max was a";
        fx.Tokenizer.Encode("Lily liked").Should().HaveCount(3);
        var args = new[] { "generate", "--model", fx.ModelDir, "--prompt", "Lily liked", "--temperature", "0.8", "--top-p", "0", "--seed", "7", "--max-new-tokens", "57" };
        var first = Run(args);
        first.Code.Should().Be(0, first.Err);
        first.Out.Should().Be(expected + "\n");
        Run(args).Out.Should().Be(first.Out, "same seed, same text");
        args[^3] = "8";
        Run(args).Out.Should().NotBe(first.Out, "another seed, another sample");
    }

    [Fact]
    public void Eval_prints_loss_perplexity_and_tokens_and_a_json_last_line()
    {
        var dir = fx.NewDir("eval");
        Directory.CreateDirectory(dir);
        var data = Path.Combine(dir, "docs.txt");
        File.WriteAllText(data, "Once upon a time, there was a little girl named Lily.\nShe liked to play.\n\n  \nTom saw a big dog. The dog was happy.\n");
        var r = Run("eval", "--model", fx.ModelDir, "--data", data, "--json");
        r.Code.Should().Be(0, r.Err);
        var lines = r.Out.TrimEnd('\n').Split('\n');
        var json = JsonNode.Parse(lines[^1])!;
        var expected = Evaluator.Evaluate(fx.Model, fx.Tokenizer, EvalDocuments.Read(data));
        json["loss"]!.GetValue<double>().Should().BeApproximately(expected.Loss, 1e-9);
        json["perplexity"]!.GetValue<double>().Should().BeApproximately(Math.Exp(expected.Loss), 1e-9);
        json["tokens"]!.GetValue<long>().Should().Be(expected.Tokens);
        r.Out.Should().Contain("loss").And.Contain("perplexity").And.Contain($"tokens      {expected.Tokens}");

        var plain = Run("eval", "--model", fx.ModelDir, "--data", data);
        plain.Out.Should().NotContain("{");
    }

    [Fact]
    public void Eval_on_tinystories_text_is_near_the_authors_validation_loss()
    {
        // The author reports a validation loss of 1.2968 for stories260K on TinyStories.
        var data = TestData.Repo("tinystories/cs336_tinystories_sample.txt");
        var r = Run("eval", "--model", fx.ModelDir, "--data", data, "--json");
        r.Code.Should().Be(0, r.Err);
        var json = JsonNode.Parse(r.Out.TrimEnd('\n').Split('\n')[^1])!;
        json["loss"]!.GetValue<double>().Should().BeInRange(1.0, 2.0);
    }

    [Fact]
    public void Bad_input_gives_exit_code_2_and_a_message_naming_it()
    {
        var missingDir = Path.Combine(fx.Root, "nope");
        var r = Run("generate", "--model", missingDir);
        r.Code.Should().Be(2);
        r.Err.Should().Contain(missingDir);
        r.Out.Should().BeEmpty();

        r = Run("generate", "--model", fx.ModelDir, "--seed", "0");
        (r.Code, r.Err).Should().Be((2, "peft generate: error: generate: option '--seed' has value '0': expected a positive integer\n"));

        r = Run("generate", "--model", fx.ModelDir, "--temperature", "-1");
        r.Code.Should().Be(2);
        r.Err.Should().Contain("'--temperature'").And.Contain("'-1'");

        r = Run("generate", "--model", fx.ModelDir, "--top-k", "5");
        r.Code.Should().Be(2);
        r.Err.Should().Contain("unknown option '--top-k'");

        r = Run("eval", "--model", fx.ModelDir);
        r.Code.Should().Be(2);
        r.Err.Should().Contain("'--data'");

        var badData = Path.Combine(fx.Root, $"bad-{Guid.NewGuid():N}.jsonl");
        File.WriteAllText(badData, "{\"text\": \"fine\"}\n[1, 2]\n");
        r = Run("eval", "--model", fx.ModelDir, "--data", badData);
        r.Code.Should().Be(2);
        r.Err.Should().Contain($"{badData}: line 2");
    }

    [Fact]
    public void Import_errors_exit_2_and_leave_no_output_folder()
    {
        var outDir = fx.NewDir("cli-never");
        var missing = Path.Combine(fx.Root, "missing.bin");
        var r = Run("import-llama2c", "--checkpoint", missing, "--tokenizer", Stories260KFixture.TokenizerModel, "--out", outDir);
        r.Code.Should().Be(2);
        r.Err.Should().Contain(missing).And.Contain("not found");

        var truncated = Path.Combine(fx.Root, $"cut-{Guid.NewGuid():N}.bin");
        var bytes = File.ReadAllBytes(Stories260KFixture.Checkpoint);
        File.WriteAllBytes(truncated, bytes[..^4]);
        r = Run("import-llama2c", "--checkpoint", truncated, "--tokenizer", Stories260KFixture.TokenizerModel, "--out", outDir);
        r.Code.Should().Be(2);
        r.Err.Should().Contain(truncated).And.Contain("truncated");

        r = Run("import-llama2c", "--checkpoint", Stories260KFixture.Checkpoint, "--out", outDir);
        r.Code.Should().Be(2);
        r.Err.Should().Contain("'--tokenizer'");

        Directory.Exists(outDir).Should().BeFalse();
    }

    [Fact]
    public void A_damaged_model_folder_gives_exit_code_2_naming_the_tensor_and_prints_no_text()
    {
        var dir = fx.NewDir("damaged");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(fx.ModelDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var weights = Path.Combine(dir, HfModelFolder.WeightsFile);
        var tensors = Peft.Host.Formats.Safetensors.Load(weights);
        tensors["model.layers.0.self_attn.k_proj.weight"].Dispose();
        tensors["model.layers.0.self_attn.k_proj.weight"] = TorchSharp.torch.zeros(64, 64); // k_proj is (kv_dim 32, 64)
        Peft.Host.Formats.Safetensors.Save(weights, tensors);
        foreach (var t in tensors.Values) t.Dispose();

        foreach (var verb in new[] { "generate", "eval" })
        {
            var r = verb == "generate"
                ? Run("generate", "--model", dir, "--temperature", "0")
                : Run("eval", "--model", dir, "--data", TestData.Repo("tinystories/cs336_tinystories_sample.txt"));
            r.Code.Should().Be(2, verb);
            r.Out.Should().BeEmpty(verb);
            r.Err.Should().Contain("'model.layers.0.self_attn.k_proj.weight' has shape [64, 64] but config.json needs [32, 64]");
        }
    }

    [Theory]
    [InlineData("import-llama2c", "--checkpoint")]
    [InlineData("generate", "--max-new-tokens")]
    [InlineData("eval", "--json")]
    public void Help_lists_the_options(string verb, string option)
    {
        var r = Run(verb, "--help");
        r.Code.Should().Be(0);
        r.Out.Should().Contain($"usage: peft {verb}").And.Contain(option).And.Contain("example");
    }
}
