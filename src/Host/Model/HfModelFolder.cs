using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Abstractions.Model;
using Peft.Host.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A Hugging Face model folder: <c>config.json</c> plus <c>model.safetensors</c>, or shards
/// <c>model-0000i-of-0000n.safetensors</c> listed by <c>model.safetensors.index.json</c>
/// (<c>{"metadata": {"total_size": N}, "weight_map": {tensor: file}}</c>), and optionally <c>tokenizer.model</c>.
/// </summary>
public static class HfModelFolder
{
    public const string ConfigFile = "config.json";
    public const string WeightsFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";
    public const string TokenizerFile = "tokenizer.model";

    /// <summary>
    /// Load the model in <paramref name="dir"/>. fp32, fp16 and bf16 tensors are accepted and converted to
    /// <paramref name="storageDtype"/> (a tensor already in that dtype is copied bit for bit). Every tensor the
    /// architecture needs must be present once with the right shape; an unknown tensor is an error.
    /// </summary>
    public static LlamaForCausalLM Load(string dir, ScalarType storageDtype = ScalarType.Float32, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new PeftFormatException($"{dir}: model folder not found");
        var config = LlamaConfig.Load(Path.Combine(dir, ConfigFile));
        var files = WeightFiles(dir);

        var model = new LlamaForCausalLM(config, storageDtype, device, initialize: false);
        try
        {
            var expected = model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
            var loaded = new HashSet<string>(StringComparer.Ordinal);
            var embeddingInFile = new List<(string File, string Name)>();
            foreach (var (file, listed) in files)
            {
                var (infos, _, dataStart) = Safetensors.ReadHeader(file);
                var wanted = new HashSet<string>(StringComparer.Ordinal);
                foreach (var info in infos)
                {
                    if (IsIgnored(info.Name)) continue;
                    if (config.TieWordEmbeddings && info.Name == "lm_head.weight")
                    {
                        embeddingInFile.Add((file, info.Name)); // allowed only if equal to the tied embedding (checked below)
                        continue;
                    }
                    if (!expected.TryGetValue(info.Name, out var target))
                        throw new PeftFormatException($"{file}: unexpected tensor '{info.Name}' (not a parameter of LlamaForCausalLM with this config.json)");
                    if (!loaded.Add(info.Name))
                        throw new PeftFormatException($"{file}: tensor '{info.Name}' appears in more than one file");
                    CheckReadable(file, info, target);
                    wanted.Add(info.Name);
                }
                if (listed is not null)
                    foreach (var name in listed)
                        if (!infos.Any(i => i.Name == name))
                            throw new PeftFormatException($"{Path.Combine(dir, IndexFile)}: weight_map puts '{name}' in {Path.GetFileName(file)}, which does not contain it");

                // Tensor by tensor, straight into the parameter (no copy of the shard in memory; see ReadInto).
                using (var fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan))
                    foreach (var info in infos.Where(i => wanted.Contains(i.Name)))
                        ReadInto(fs, dataStart, info, expected[info.Name]);
            }
            var missing = expected.Keys.Where(k => !loaded.Contains(k)).ToList();
            if (missing.Count > 0)
                throw new PeftFormatException(
                    $"{dir}: missing tensor '{missing[0]}'" + (missing.Count > 1 ? $" (and {missing.Count - 1} more)" : "") + " required by config.json");
            foreach (var (file, name) in embeddingInFile) CheckTiedHead(file, name, model);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Elements read per chunk: 4M (16 MiB of fp32), so a dtype conversion needs one chunk of scratch, not a tensor's worth.</summary>
    /// <remarks>Settable by tests on their own thread (to cross chunk boundaries with small tensors; 0: the default), so a
    /// test never changes the chunk of a load running beside it; reading is exact for any value.</remarks>
    [ThreadStatic] internal static long ChunkElements;
    const long DefaultChunkElements = 4L << 20;

    /// <summary>
    /// Read one tensor of the file into <paramref name="target"/> (contiguous CPU, same shape) in chunks: bytes go
    /// straight into the parameter's storage when the dtypes match, else through one chunk-sized tensor of the stored
    /// dtype that <c>copy_</c> converts. Peak extra memory is one chunk, whatever the tensor's size (a 128,256 × 4096
    /// embedding is 1 GiB in bf16).
    /// </summary>
    internal static void ReadInto(FileStream fs, long dataStart, Safetensors.TensorInfo info, Tensor target)
    {
        using var _ = torch.no_grad();
        var stored = Safetensors.ToScalarType(info.DType);
        long count = info.Shape.Aggregate(1L, (a, b) => a * b);
        if (count == 0) return;
        int elementSize = Safetensors.ElementSize(info.DType)!.Value;
        if (!target.is_contiguous() || target.device_type != DeviceType.CPU)
            throw new InvalidOperationException($"{info.Name}: parameters are built contiguous on the CPU");
        long chunk = ChunkElements > 0 ? ChunkElements : DefaultChunkElements;
        fs.Position = dataStart + info.Begin;
        using var flat = target.view(-1);
        Tensor? staging = null;
        try
        {
            for (long start = 0; start < count; start += chunk)
            {
                long n = Math.Min(chunk, count - start);
                using var slice = flat.narrow(0, start, n);
                if (stored == target.dtype)
                {
                    fs.ReadExactly(slice.bytes);   // a span over the parameter's own storage
                    continue;
                }
                staging ??= torch.empty(Math.Min(chunk, count), stored);
                using var part = staging.narrow(0, 0, n);
                fs.ReadExactly(part.bytes[..checked((int)(n * elementSize))]);
                slice.copy_(part);
            }
        }
        finally
        {
            staging?.Dispose();
        }
    }

    /// <summary>
    /// The dtype every floating-point tensor of the folder is stored in (F32, BF16 or F16), or null when they differ.
    /// Loading a bf16 folder in bf16 keeps its frozen weights at 2 bytes each; the layers compute in fp32 either way.
    /// </summary>
    public static ScalarType? StoredDtype(string dir)
    {
        ScalarType? found = null;
        foreach (var (file, _) in WeightFiles(dir))
            foreach (var info in Safetensors.ReadHeader(file).Tensors)
            {
                if (info.DType is not ("F32" or "F16" or "BF16")) continue;
                var t = Safetensors.ToScalarType(info.DType);
                if (found is { } f && f != t) return null;
                found = t;
            }
        return found;
    }

    /// <summary>Old HF checkpoints carry the rotary inverse frequencies; HF ignores them on load.</summary>
    /// <summary>Tensors a folder may carry that the model does not hold (transformers' old rotary buffers).</summary>
    internal static bool IsIgnored(string name) => name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>A full-precision tensor of a folder can be read into <paramref name="target"/>: the shape config.json needs, F32/F16/BF16.</summary>
    internal static void CheckReadable(string file, Safetensors.TensorInfo info, Tensor target)
    {
        if (!info.Shape.SequenceEqual(target.shape))
            throw new PeftFormatException(
                $"{file}: tensor '{info.Name}' has shape [{string.Join(", ", info.Shape)}] but config.json needs [{string.Join(", ", target.shape)}]");
        if (info.DType is not ("F32" or "F16" or "BF16"))
            throw new PeftFormatException($"{file}: tensor '{info.Name}' has dtype {info.DType}; expected F32, F16 or BF16");
    }

    static void CheckTiedHead(string file, string name, LlamaForCausalLM model)
    {
        var t = Safetensors.Load(file, n => n == name)[name];
        using (t)
        {
            using var e = model.EmbeddingWeight.detach().to(t.dtype);
            if (!t.shape.SequenceEqual(e.shape) || !t.eq(e).all().item<bool>())
                throw new PeftFormatException($"{file}: tensor '{name}' differs from model.embed_tokens.weight but config.json has tie_word_embeddings=true");
        }
    }

    /// <summary>The weight files of a folder, each with the tensor names the index assigns to it (null without an index).</summary>
    static List<(string File, List<string>? Listed)> WeightFiles(string dir)
    {
        var single = Path.Combine(dir, WeightsFile);
        var index = Path.Combine(dir, IndexFile);
        if (File.Exists(index))
        {
            JsonObject map;
            try
            {
                var root = JsonNode.Parse(File.ReadAllText(index))?.AsObject() ?? throw new JsonException("empty document");
                map = root["weight_map"] as JsonObject ?? throw new JsonException("no \"weight_map\" object");
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            { throw new PeftFormatException($"{index}: not a valid safetensors index ({e.Message})"); }
            var byFile = new Dictionary<string, List<string>>(StringComparer.Ordinal);
            foreach (var (name, node) in map)
            {
                if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.String)
                    throw new PeftFormatException($"{index}: weight_map entry '{name}' is not a file name");
                var file = v.GetValue<string>();
                if (file.Contains('/') || file.Contains('\\') || file.StartsWith('.'))
                    throw new PeftFormatException($"{index}: weight_map entry '{name}' names '{file}', which is not a file in the folder");
                if (!byFile.TryGetValue(file, out var list)) byFile[file] = list = new();
                list.Add(name);
            }
            if (byFile.Count == 0) throw new PeftFormatException($"{index}: weight_map is empty");
            var result = new List<(string, List<string>?)>();
            foreach (var (file, names) in byFile.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                var path = Path.Combine(dir, file);
                if (!File.Exists(path)) throw new PeftFormatException($"{path}: file not found (listed in {IndexFile})");
                result.Add((path, names));
            }
            return result;
        }
        if (File.Exists(single)) return [(single, null)];
        throw new PeftFormatException($"{dir}: no {WeightsFile} and no {IndexFile}");
    }

    /// <summary>
    /// Write <paramref name="model"/> as an HF folder, atomically: config.json (torch_dtype = the storage dtype),
    /// the weights in the storage dtype (metadata {"format": "pt"}), one file or shards of at most
    /// <paramref name="maxShardBytes"/> (a tensor larger than that gets a shard of its own) plus the index, and a
    /// copy of <paramref name="tokenizerModelPath"/> as tokenizer.model and of each of <paramref name="tokenizerFiles"/> under its own name. Each linear slot is written as its
    /// effective dense weight (<see cref="ILinearLayer.DenseWeight"/>: a quantized layer is dequantized, an
    /// attached adapter contributes what its DenseWeight includes), under <c>{slot}.weight</c>. With tied
    /// embeddings the head is not written: it is <c>model.embed_tokens.weight</c>.
    /// </summary>
    public static void Save(LlamaForCausalLM model, string dir, string? tokenizerModelPath = null, long? maxShardBytes = null,
                            IReadOnlyList<string>? tokenizerFiles = null)
    {
        // Streamed: each tensor is made (a slot's dense weight, a parameter in the storage dtype) when the writer
        // reaches it and freed after its bytes are written, so saving needs one tensor's worth of memory, not a copy of the model.
        WriteStreamed(dir, model.Config, DtypeName(model.StorageDtype), StateEntries(model, model.StorageDtype), tokenizerModelPath, maxShardBytes, tokenizerFiles);
    }

    /// <summary>
    /// The tensors <see cref="Save"/> writes, in model order, each made when the writer asks for it: a parameter
    /// already in <paramref name="dtype"/> on the CPU is written from its own storage (no copy); a linear slot is
    /// written as its <see cref="ILinearLayer.DenseWeight"/> (one layer's copy at a time).
    /// </summary>
    public static List<Safetensors.TensorEntry> StateEntries(LlamaForCausalLM model, ScalarType dtype)
    {
        var result = new List<Safetensors.TensorEntry>();
        Safetensors.TensorEntry Param(string name, Tensor p) => new(name, dtype, p.shape, () =>
        {
            using var _ = torch.no_grad();
            var d = p.detach();
            if (d.dtype == dtype && d.device_type == DeviceType.CPU) return d;
            using (d) return d.to(dtype).cpu();
        });

        result.Add(Param("model.embed_tokens.weight", model.EmbeddingWeight));
        for (int i = 0; i < model.Config.NumHiddenLayers; i++)
        {
            var prefix = $"model.layers.{i}.";
            foreach (var slot in new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" })
                AddLinear(prefix + slot);
            foreach (var (name, p) in model.named_parameters())
                if (name.StartsWith(prefix, StringComparison.Ordinal) && name.EndsWith("layernorm.weight", StringComparison.Ordinal))
                    result.Add(Param(name, p));
        }
        result.Add(Param("model.norm.weight", model.named_parameters().First(p => p.name == "model.norm.weight").parameter));
        if (!model.Config.TieWordEmbeddings) AddLinear(LlamaForCausalLM.HeadName);
        return result;

        void AddLinear(string name)
        {
            var layer = model.GetLinear(name);
            result.Add(new($"{name}.weight", dtype, [layer.OutFeatures, layer.InFeatures], () =>
            {
                // a plain layer already in the dtype: its own storage (a 128,256-row head is not copied); else one new tensor
                if (layer is BaseLinear plain && plain.Weight.dtype == dtype && plain.Weight.device_type == DeviceType.CPU) return plain.Weight.detach();
                var w = layer.DenseWeight(dtype);
                if (w.device_type == DeviceType.CPU) return w;
                using (w) return w.cpu();
            }));
            if (layer.Bias is { } b) result.Add(Param($"{name}.bias", b));
        }
    }

    /// <summary>Write a folder from tensors already named as HF names them (the importers); see <see cref="WriteStreamed"/>.</summary>
    public static void Write(string dir, LlamaConfig config, string torchDtype, IReadOnlyList<(string Name, Tensor Tensor)> tensors,
                             string? tokenizerModelPath = null, long? maxShardBytes = null, IReadOnlyList<string>? tokenizerFiles = null) =>
        WriteStreamed(dir, config, torchDtype,
            tensors.Select(x => new Safetensors.TensorEntry(x.Name, x.Tensor.dtype, x.Tensor.shape, () => x.Tensor.detach())).ToList(),
            tokenizerModelPath, maxShardBytes, tokenizerFiles);

    /// <summary>
    /// Write a folder, atomically, from tensors produced one at a time (<see cref="Safetensors.SaveStreamed"/>):
    /// config.json, one weights file or shards of at most <paramref name="maxShardBytes"/> planned from the declared
    /// sizes in tensor order (as HF's save_pretrained does) plus the index, and the tokenizer files.
    /// </summary>
    public static void WriteStreamed(string dir, LlamaConfig config, string torchDtype, IReadOnlyList<Safetensors.TensorEntry> tensors,
                                     string? tokenizerModelPath = null, long? maxShardBytes = null, IReadOnlyList<string>? tokenizerFiles = null)
    {
        if (maxShardBytes is <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "must be positive");
        if (tokenizerModelPath is not null && !File.Exists(tokenizerModelPath))
            throw new PeftFormatException($"{tokenizerModelPath}: tokenizer file not found");
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };

        // Plan shards in tensor order, as HF's save_pretrained does: start a new shard when the next tensor would overflow.
        var shards = new List<List<Safetensors.TensorEntry>> { new() };
        long current = 0;
        foreach (var item in tensors)
        {
            long bytes = item.Bytes;
            if (maxShardBytes is long max && current > 0 && current + bytes > max)
            {
                shards.Add(new());
                current = 0;
            }
            shards[^1].Add(item);
            current += bytes;
        }

        AtomicFile.WriteDirectory(dir, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, ConfigFile), config.ToJson(torchDtype));
            if (shards.Count == 1)
            {
                Safetensors.SaveStreamed(Path.Combine(tmp, WeightsFile), shards[0], metadata);
            }
            else
            {
                var weightMap = new JsonObject();
                long total = 0;
                for (int s = 0; s < shards.Count; s++)
                {
                    var file = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
                    Safetensors.SaveStreamed(Path.Combine(tmp, file), shards[s], metadata);
                    foreach (var t in shards[s])
                    {
                        weightMap[t.Name] = file;
                        total += t.Bytes;
                    }
                }
                var sortedMap = new JsonObject();
                foreach (var (k, v) in weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sortedMap[k] = v?.DeepClone();
                var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = sortedMap };
                File.WriteAllText(Path.Combine(tmp, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            }
            // Copy the bytes (not the file, whose read-only mode would come along).
            if (tokenizerModelPath is not null) File.WriteAllBytes(Path.Combine(tmp, TokenizerFile), File.ReadAllBytes(tokenizerModelPath));
            // Tokenizer files of the source folder (tokenizer.json, tokenizer_config.json...), kept under their names.
            foreach (var file in tokenizerFiles ?? [])
                File.WriteAllBytes(Path.Combine(tmp, Path.GetFileName(file)), File.ReadAllBytes(file));
        });
    }

    public static string DtypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new ArgumentException($"no HF torch_dtype name for {dtype}"),
    };

    /// <summary>Parse a dtype name (float32/fp32, bfloat16/bf16, float16/fp16).</summary>
    public static ScalarType ParseDtype(string name) => name.ToLowerInvariant() switch
    {
        "float32" or "fp32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" => ScalarType.Float16,
        _ => throw new ArgumentException($"unknown dtype '{name}': expected float32, bfloat16 or float16"),
    };
}
