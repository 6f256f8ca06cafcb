using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Host.Import;
using Peft.Host.Model;
using Peft.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Import;

[Collection(Stories260KCollection.Name)]
public sealed class Llama2cImportTests(Stories260KFixture fx)
{
    /// <summary>The raw float32 array starting <paramref name="floatOffset"/> floats after the 28-byte header.</summary>
    static float[] RawFloats(string file, long floatOffset, int count)
    {
        using var fs = File.OpenRead(file);
        fs.Position = 28 + 4 * floatOffset;
        var bytes = new byte[4 * count];
        fs.ReadExactly(bytes);
        var result = new float[count];
        Buffer.BlockCopy(bytes, 0, result, 0, bytes.Length);
        return result;
    }

    [Fact]
    public void Config_json_describes_stories260K()
    {
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(fx.ModelDir, HfModelFolder.ConfigFile)))!;
        c["hidden_size"]!.GetValue<int>().Should().Be(64);
        c["intermediate_size"]!.GetValue<int>().Should().Be(172);
        c["num_hidden_layers"]!.GetValue<int>().Should().Be(5);
        c["num_attention_heads"]!.GetValue<int>().Should().Be(8);
        c["num_key_value_heads"]!.GetValue<int>().Should().Be(4);
        c["vocab_size"]!.GetValue<int>().Should().Be(512);
        c["max_position_embeddings"]!.GetValue<int>().Should().Be(512);
        c["tie_word_embeddings"]!.GetValue<bool>().Should().BeTrue("the header's vocab_size is positive: shared classifier");
        c["rms_norm_eps"]!.GetValue<double>().Should().Be(1e-5);
        c["rope_theta"]!.GetValue<double>().Should().Be(10000);
        c["bos_token_id"]!.GetValue<int>().Should().Be(1);
        c["eos_token_id"]!.GetValue<int>().Should().Be(2);
        c["torch_dtype"]!.GetValue<string>().Should().Be("float32");
        c["architectures"]![0]!.GetValue<string>().Should().Be("LlamaForCausalLM");
        File.ReadAllBytes(Path.Combine(fx.ModelDir, HfModelFolder.TokenizerFile)).Should().Equal(File.ReadAllBytes(Stories260KFixture.TokenizerModel));
    }

    [Fact]
    public void Weights_are_the_bin_arrays_with_q_and_k_rows_moved_to_the_rotate_half_layout()
    {
        const int dim = 64, hidden = 172, layers = 5, heads = 8, kvHeads = 4, vocab = 512, headDim = 8, kvDim = 32;
        const int layer = 3;
        var bin = Stories260KFixture.Checkpoint;
        var p = fx.Model.NamedParameters().ToDictionary(x => x.Name, x => x.Parameter);
        float[] Param(string name) => p[name].data<float>().ToArray();

        // Offsets (in floats) of each array in the .bin, from llama2.c's layout.
        long embed = 0, rmsAtt = embed + vocab * dim, wq = rmsAtt + layers * dim, wk = wq + layers * dim * dim,
             wv = wk + layers * kvDim * dim, wo = wv + layers * kvDim * dim, rmsFfn = wo + layers * dim * dim,
             w1 = rmsFfn + layers * dim, w2 = w1 + layers * hidden * dim, w3 = w2 + layers * dim * hidden,
             rmsFinal = w3 + layers * hidden * dim;

        Param("model.embed_tokens.weight").Should().Equal(RawFloats(bin, embed, vocab * dim));
        Param($"model.layers.{layer}.input_layernorm.weight").Should().Equal(RawFloats(bin, rmsAtt + layer * dim, dim));
        Param($"model.layers.{layer}.post_attention_layernorm.weight").Should().Equal(RawFloats(bin, rmsFfn + layer * dim, dim));
        Param($"model.layers.{layer}.self_attn.v_proj.weight").Should().Equal(RawFloats(bin, wv + layer * kvDim * dim, kvDim * dim));
        Param($"model.layers.{layer}.self_attn.o_proj.weight").Should().Equal(RawFloats(bin, wo + layer * dim * dim, dim * dim));
        Param($"model.layers.{layer}.mlp.gate_proj.weight").Should().Equal(RawFloats(bin, w1 + layer * hidden * dim, hidden * dim));
        Param($"model.layers.{layer}.mlp.down_proj.weight").Should().Equal(RawFloats(bin, w2 + layer * dim * hidden, dim * hidden));
        Param($"model.layers.{layer}.mlp.up_proj.weight").Should().Equal(RawFloats(bin, w3 + layer * hidden * dim, hidden * dim));
        Param("model.norm.weight").Should().Equal(RawFloats(bin, rmsFinal, dim));

        // llama2.c pairs rows (2j, 2j+1) of a head; HF pairs rows (j, j + head_dim/2). So HF row h*hd + c*hd/2 + j
        // is llama2.c row h*hd + 2j + c.
        void CheckPermuted(string name, long arrayStart, int rowsPerLayer, int headCount)
        {
            var raw = RawFloats(bin, arrayStart + layer * rowsPerLayer * dim, rowsPerLayer * dim);
            var hf = Param(name);
            for (int h = 0; h < headCount; h++)
            for (int c = 0; c < 2; c++)
            for (int j = 0; j < headDim / 2; j++)
            {
                int hfRow = h * headDim + c * (headDim / 2) + j, rawRow = h * headDim + 2 * j + c;
                hf.AsSpan(hfRow * dim, dim).ToArray().Should().Equal(raw.AsSpan(rawRow * dim, dim).ToArray(), $"{name} row {hfRow}");
            }
        }
        CheckPermuted($"model.layers.{layer}.self_attn.q_proj.weight", wq, dim, heads);
        CheckPermuted($"model.layers.{layer}.self_attn.k_proj.weight", wk, kvDim, kvHeads);
    }

    /// <summary>A random llama2.c checkpoint with the given header (negative vocab: separate classifier).</summary>
    static void WriteSyntheticBin(string path, int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen, out float[] body)
    {
        var header = new Llama2cImporter.Header(dim, hidden, layers, heads, kvHeads, Math.Abs(vocab), vocab > 0, seqLen);
        var rng = new Random(5);
        body = Enumerable.Range(0, (int)header.FloatCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        using var fs = File.Create(path);
        using var w = new BinaryWriter(fs);
        foreach (var v in new[] { dim, hidden, layers, heads, kvHeads, vocab, seqLen }) w.Write(v);
        foreach (var f in body) w.Write(f);
    }

    [Fact]
    public void A_checkpoint_with_its_own_classifier_gets_an_untied_lm_head()
    {
        var bin = Path.Combine(fx.Root, $"untied-{Guid.NewGuid():N}.bin");
        WriteSyntheticBin(bin, dim: 16, hidden: 24, layers: 1, heads: 2, kvHeads: 1, vocab: -512, seqLen: 32, out var body);
        var outDir = fx.NewDir("untied");
        Llama2cImporter.Import(bin, Stories260KFixture.TokenizerModel, outDir);
        using var model = HfModelFolder.Load(outDir);
        model.Config.TieWordEmbeddings.Should().BeFalse();
        model.GetLinear("lm_head").Should().BeOfType<BaseLinear>();
        var wcls = body[^(512 * 16)..];
        var head = model.NamedParameters().Single(p => p.Name == "lm_head.weight").Parameter;
        head.data<float>().ToArray().Should().Equal(wcls, "wcls is the last array, after the skipped freq_cis tables");
        var embedding = model.EmbeddingWeight.data<float>().ToArray();
        embedding.Should().Equal(body[..(512 * 16)]);
    }

    [Fact]
    public void A_missing_truncated_or_inconsistent_checkpoint_is_an_error_and_writes_nothing()
    {
        var outDir = fx.NewDir("never");

        var missing = Path.Combine(fx.Root, "no-such.bin");
        var act = () => Llama2cImporter.Import(missing, Stories260KFixture.TokenizerModel, outDir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{missing}: checkpoint file not found");

        var truncated = Path.Combine(fx.Root, $"truncated-{Guid.NewGuid():N}.bin");
        var bytes = File.ReadAllBytes(Stories260KFixture.Checkpoint);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length - 1000)]);
        act = () => Llama2cImporter.Import(truncated, Stories260KFixture.TokenizerModel, outDir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{truncated}: file has {bytes.Length - 1000} bytes but its header (dim=64*needs {bytes.Length} (truncated)");

        var headerOnly = Path.Combine(fx.Root, $"short-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(headerOnly, bytes[..20]);
        act = () => Llama2cImporter.Import(headerOnly, Stories260KFixture.TokenizerModel, outDir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{headerOnly}: truncated llama2.c checkpoint (20 bytes*");

        var badHeads = Path.Combine(fx.Root, $"heads-{Guid.NewGuid():N}.bin");
        var copy = (byte[])bytes.Clone();
        BitConverter.GetBytes(3).CopyTo(copy, 16); // n_kv_heads = 3 does not divide n_heads = 8
        File.WriteAllBytes(badHeads, copy);
        act = () => Llama2cImporter.Import(badHeads, Stories260KFixture.TokenizerModel, outDir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{badHeads}: header n_kv_heads = 3 does not divide n_heads = 8");

        var badTokenizer = Path.Combine(fx.Root, $"tok-{Guid.NewGuid():N}.model");
        File.WriteAllText(badTokenizer, "not a model");
        act = () => Llama2cImporter.Import(Stories260KFixture.Checkpoint, badTokenizer, outDir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{badTokenizer}*");

        Directory.Exists(outDir).Should().BeFalse();
        Directory.GetDirectories(fx.Root).Should().NotContain(d => Path.GetFileName(d).StartsWith(".never"), "no temporary folder is left behind");
    }

    [Fact]
    public void The_rotary_permutation_is_HFs_view_transpose_reshape()
    {
        // 2 heads of head_dim 4 over 1 input column: rows [h0: 0 1 2 3, h1: 4 5 6 7] -> [0 2 1 3, 4 6 5 7].
        using var w = torch.arange(8, dtype: ScalarType.Float32).view(8, 1);
        using var permuted = Llama2cImporter.RotaryPermute(w, heads: 2);
        permuted.view(8).data<float>().ToArray().Should().Equal(0, 2, 1, 3, 4, 6, 5, 7);
    }
}
