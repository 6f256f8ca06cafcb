using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

[Collection(Stories260KCollection.Name)]
public sealed class HfModelFolderTests(Stories260KFixture fx)
{
    static readonly long[] SampleIds = [1, 403, 407, 261, 378, 11, 1, 7, 99, 511];

    Tensor Logits(LlamaForCausalLM model)
    {
        using var ids = torch.tensor(SampleIds).unsqueeze(0);
        return model.Logits(ids);
    }

    /// <summary>A copy of the imported folder to damage.</summary>
    string CopyOfImported()
    {
        var dir = fx.NewDir("copy");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(fx.ModelDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    [Fact]
    public void Loading_the_imported_folder_gives_every_tensor_bit_identically_and_saving_it_again_round_trips()
    {
        var file = Path.Combine(fx.ModelDir, HfModelFolder.WeightsFile);
        var onDisk = Safetensors.Load(file);
        try
        {
            var parameters = fx.Model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
            onDisk.Keys.Should().BeEquivalentTo(parameters.Keys, "tied embeddings: no lm_head.weight");
            foreach (var (name, t) in onDisk) TensorAssert.Same(t, parameters[name]).Should().BeTrue(name);
        }
        finally { foreach (var t in onDisk.Values) t.Dispose(); }
        Safetensors.ReadHeader(file).Metadata["format"].Should().Be("pt");

        var saved = fx.NewDir("resaved");
        HfModelFolder.Save(fx.Model, saved, Path.Combine(fx.ModelDir, HfModelFolder.TokenizerFile));
        using var reloaded = HfModelFolder.Load(saved);
        var original = fx.Model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        foreach (var (name, p) in reloaded.NamedParameters()) TensorAssert.Same(p, original[name]).Should().BeTrue(name);
        File.ReadAllBytes(Path.Combine(saved, HfModelFolder.TokenizerFile)).Should().Equal(File.ReadAllBytes(Stories260KFixture.TokenizerModel));
        File.ReadAllText(Path.Combine(saved, HfModelFolder.ConfigFile)).Should().Be(File.ReadAllText(Path.Combine(fx.ModelDir, HfModelFolder.ConfigFile)));
    }

    [Fact]
    public void A_sharded_copy_has_an_index_and_gives_the_same_logits()
    {
        var dir = fx.NewDir("sharded");
        HfModelFolder.Save(fx.Model, dir, maxShardBytes: 200_000);
        File.Exists(Path.Combine(dir, HfModelFolder.WeightsFile)).Should().BeFalse();
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, HfModelFolder.IndexFile)))!;
        var map = index["weight_map"]!.AsObject();
        var shards = map.Select(kv => kv.Value!.GetValue<string>()).Distinct().OrderBy(x => x).ToList();
        shards.Count.Should().BeGreaterThan(3, "~1 MB of weights in shards of at most 200 kB");
        shards[0].Should().Be($"model-00001-of-{shards.Count:D5}.safetensors");
        foreach (var shard in shards) new FileInfo(Path.Combine(dir, shard)).Length.Should().BeLessThan(200_000 + 4096);
        map.Count.Should().Be(fx.Model.NamedParameters().Count());
        index["metadata"]!["total_size"]!.GetValue<long>().Should().Be(fx.Model.NamedParameters().Sum(p => p.Parameter.numel() * 4));

        using var sharded = HfModelFolder.Load(dir);
        using var a = Logits(fx.Model);
        using var b = Logits(sharded);
        TensorAssert.Same(a, b).Should().BeTrue();
    }

    [Fact]
    public void Half_precision_storage_loads_from_and_saves_to_bf16_and_fp16_files()
    {
        using var bf16 = HfModelFolder.Load(fx.ModelDir, ScalarType.BFloat16);
        bf16.NamedParameters().Should().OnlyContain(p => p.Parameter.dtype == ScalarType.BFloat16);
        using (var a = Logits(fx.Model))
        using (var b = Logits(bf16))
        {
            b.dtype.Should().Be(ScalarType.Float32, "compute is fp32");
            (a - b).abs().max().item<float>().Should().BeLessThan(0.5f).And.BeGreaterThan(0f);
        }

        var bfDir = fx.NewDir("bf16");
        HfModelFolder.Save(bf16, bfDir);
        JsonNode.Parse(File.ReadAllText(Path.Combine(bfDir, HfModelFolder.ConfigFile)))!["torch_dtype"]!.GetValue<string>().Should().Be("bfloat16");
        Safetensors.ReadHeader(Path.Combine(bfDir, HfModelFolder.WeightsFile)).Tensors.Should().OnlyContain(t => t.DType == "BF16");
        using var bfAgain = HfModelFolder.Load(bfDir, ScalarType.BFloat16);
        var bfParams = bf16.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        foreach (var (name, p) in bfAgain.NamedParameters()) TensorAssert.Same(p, bfParams[name]).Should().BeTrue(name);

        // A bf16 file read into fp32 storage holds exactly the bf16 values.
        using var widened = HfModelFolder.Load(bfDir, ScalarType.Float32);
        foreach (var (name, p) in widened.NamedParameters())
        {
            using var expected = bfParams[name].to(ScalarType.Float32);
            TensorAssert.Same(p, expected).Should().BeTrue(name);
        }

        using var fp16 = HfModelFolder.Load(fx.ModelDir, ScalarType.Float16);
        var fpDir = fx.NewDir("fp16");
        HfModelFolder.Save(fp16, fpDir);
        Safetensors.ReadHeader(Path.Combine(fpDir, HfModelFolder.WeightsFile)).Tensors.Should().OnlyContain(t => t.DType == "F16");
        using var fromFp16 = HfModelFolder.Load(fpDir);
        using (var a = Logits(fx.Model))
        using (var b = Logits(fromFp16))
            (a - b).abs().max().item<float>().Should().BeLessThan(0.05f);
    }

    [Fact]
    public void A_truncated_safetensors_file_is_an_error_naming_it()
    {
        var dir = CopyOfImported();
        var file = Path.Combine(dir, HfModelFolder.WeightsFile);
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length - 100)]);
        var act = () => HfModelFolder.Load(dir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{file}:*overrun*");
    }

    [Fact]
    public void Header_offsets_that_overrun_the_file_are_an_error_naming_the_tensor()
    {
        var dir = CopyOfImported();
        var file = Path.Combine(dir, HfModelFolder.WeightsFile);
        var bytes = File.ReadAllBytes(file);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength))!.AsObject();
        long dataLength = bytes.Length - 8 - headerLength;
        header["model.norm.weight"]!["data_offsets"] = new JsonArray(dataLength, dataLength + 256); // 64 floats past the end
        var newHeader = Encoding.UTF8.GetBytes(header.ToJsonString());
        var rewritten = new byte[8 + newHeader.Length + dataLength];
        BinaryPrimitives.WriteUInt64LittleEndian(rewritten, (ulong)newHeader.Length);
        newHeader.CopyTo(rewritten, 8);
        Array.Copy(bytes, 8 + headerLength, rewritten, 8 + newHeader.Length, dataLength);
        File.WriteAllBytes(file, rewritten);

        var act = () => HfModelFolder.Load(dir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{file}:*'model.norm.weight'*overrun*");
    }

    /// <summary>Rewrite the copy's weights with <paramref name="edit"/> applied to the tensor dictionary.</summary>
    string CopyWithTensors(Action<Dictionary<string, Tensor>> edit)
    {
        var dir = CopyOfImported();
        var file = Path.Combine(dir, HfModelFolder.WeightsFile);
        var tensors = Safetensors.Load(file);
        edit(tensors);
        Safetensors.Save(file, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    [Fact]
    public void A_tensor_with_the_wrong_shape_is_named_with_both_shapes()
    {
        var dir = CopyWithTensors(t => t["model.layers.2.mlp.up_proj.weight"] = torch.zeros(172, 63));
        var act = () => HfModelFolder.Load(dir);
        act.Should().Throw<PeftFormatException>()
            .WithMessage("*model.safetensors: tensor 'model.layers.2.mlp.up_proj.weight' has shape [172, 63] but config.json needs [172, 64]");
    }

    [Fact]
    public void A_missing_or_unexpected_tensor_is_named()
    {
        var missing = CopyWithTensors(t => t.Remove("model.layers.4.post_attention_layernorm.weight"));
        var act = () => HfModelFolder.Load(missing);
        act.Should().Throw<PeftFormatException>().WithMessage("*missing tensor 'model.layers.4.post_attention_layernorm.weight'*");

        var unexpected = CopyWithTensors(t => t["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8));
        var act2 = () => HfModelFolder.Load(unexpected);
        act2.Should().Throw<PeftFormatException>().WithMessage("*unexpected tensor 'model.layers.0.self_attn.q_norm.weight'*");

        var wrongDtype = CopyWithTensors(t => t["model.norm.weight"] = torch.ones(new long[] { 64 }, ScalarType.Int32));
        var act3 = () => HfModelFolder.Load(wrongDtype);
        act3.Should().Throw<PeftFormatException>().WithMessage("*'model.norm.weight' has dtype I32*");
    }

    [Fact]
    public void A_tied_checkpoint_may_repeat_the_embedding_as_lm_head_and_old_rotary_buffers_are_ignored()
    {
        var repeated = CopyWithTensors(t =>
        {
            t["lm_head.weight"] = t["model.embed_tokens.weight"].clone();
            t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4);
        });
        using (var model = HfModelFolder.Load(repeated))
        using (var a = Logits(fx.Model))
        using (var b = Logits(model))
            TensorAssert.Same(a, b).Should().BeTrue();

        var different = CopyWithTensors(t => t["lm_head.weight"] = torch.zeros(512, 64));
        var act = () => HfModelFolder.Load(different);
        act.Should().Throw<PeftFormatException>().WithMessage("*'lm_head.weight' differs from model.embed_tokens.weight*tie_word_embeddings=true");
    }

    [Fact]
    public void An_invalid_config_value_or_a_missing_file_is_an_error_naming_it()
    {
        var dir = CopyOfImported();
        var config = Path.Combine(dir, HfModelFolder.ConfigFile);
        var node = JsonNode.Parse(File.ReadAllText(config))!;
        node["num_key_value_heads"] = 0;
        File.WriteAllText(config, node.ToJsonString());
        var act = () => HfModelFolder.Load(dir);
        act.Should().Throw<PeftFormatException>().WithMessage($"{config}: key 'num_key_value_heads' has value 0*");

        File.Delete(config);
        act.Should().Throw<PeftFormatException>().WithMessage($"{config}: file not found*");

        var noWeights = CopyOfImported();
        File.Delete(Path.Combine(noWeights, HfModelFolder.WeightsFile));
        var act2 = () => HfModelFolder.Load(noWeights);
        act2.Should().Throw<PeftFormatException>().WithMessage($"{noWeights}: no model.safetensors and no model.safetensors.index.json");
    }
}
