using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Formats;

/// <summary>A file could not be read as what it claims to be. The message names the file and the problem.</summary>
public sealed class PeftFormatException(string message) : Exception(message);

/// <summary>
/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
/// length N, N bytes of JSON <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}</c>,
/// then the raw little-endian tensor bytes, offsets relative to the end of the header. The only weight
/// format this project reads; it cannot execute code.
/// </summary>
public static class Safetensors
{
    const long MaxHeaderBytes = 100L * 1024 * 1024;

    public sealed record TensorInfo(string Name, string DType, long[] Shape, long Begin, long End);

    /// <summary>Header of a file: its tensors (in file order) and its metadata. Validates every offset against the file size.</summary>
    public static (IReadOnlyList<TensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long DataStart) ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException($"{path}: file not found");
        using var fs = File.OpenRead(path);
        long fileLength = fs.Length;
        if (fileLength < 8) throw new PeftFormatException($"{path}: truncated safetensors file ({fileLength} bytes, the 8-byte header length is missing)");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        long headerLen = (long)BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen <= 0 || headerLen > MaxHeaderBytes || headerLen > fileLength - 8)
            throw new PeftFormatException($"{path}: header length {headerLen} does not fit a file of {fileLength} bytes (truncated or not safetensors)");
        var header = new byte[headerLen];
        fs.ReadExactly(header);
        JsonObject root;
        try { root = JsonNode.Parse(header)?.AsObject() ?? throw new JsonException("empty header"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new PeftFormatException($"{path}: header is not valid JSON ({e.Message})"); }

        long dataStart = 8 + headerLen, dataLength = fileLength - dataStart;
        var metadata = new Dictionary<string, string>();
        var tensors = new List<TensorInfo>();
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject meta)
                    foreach (var (k, v) in meta) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            try
            {
                var o = node!.AsObject();
                string dtype = o["dtype"]!.GetValue<string>();
                long[] shape = o["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                var offs = o["data_offsets"]!.AsArray();
                long begin = offs[0]!.GetValue<long>(), end = offs[1]!.GetValue<long>();
                int elem = ElementSize(dtype) ?? throw new PeftFormatException($"{path}: tensor '{name}' has unsupported dtype '{dtype}'");
                if (shape.Any(d => d < 0)) throw new PeftFormatException($"{path}: tensor '{name}' has a negative dimension in shape [{string.Join(", ", shape)}]");
                long numel = shape.Aggregate(1L, (a, b) => a * b);
                if (begin < 0 || end < begin || end > dataLength)
                    throw new PeftFormatException($"{path}: tensor '{name}' data_offsets [{begin}, {end}] overrun the {dataLength} data bytes of the file (truncated or corrupt)");
                if (end - begin != numel * elem)
                    throw new PeftFormatException($"{path}: tensor '{name}' has {end - begin} bytes but dtype {dtype} and shape [{string.Join(", ", shape)}] need {numel * elem}");
                tensors.Add(new TensorInfo(name, dtype, shape, begin, end));
            }
            catch (PeftFormatException) { throw; }
            catch (Exception e)
            { throw new PeftFormatException($"{path}: tensor '{name}' has a malformed header entry ({e.Message})"); }
        }
        return (tensors, metadata, dataStart);
    }

    /// <summary>Read every tensor (or those <paramref name="filter"/> accepts) in its stored dtype on the CPU. The caller owns the tensors.</summary>
    public static Dictionary<string, Tensor> Load(string path, Func<string, bool>? filter = null)
    {
        var (infos, _, dataStart) = ReadHeader(path);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        using var fs = File.OpenRead(path);
        try
        {
            foreach (var info in infos)
            {
                if (filter is not null && !filter(info.Name)) continue;
                var bytes = new byte[info.End - info.Begin];
                fs.Position = dataStart + info.Begin;
                fs.ReadExactly(bytes);
                var t = torch.empty(info.Shape, ToScalarType(info.DType));
                if (bytes.Length > 0) t.bytes = bytes;
                result[info.Name] = t;
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>
    /// Write tensors (sorted by name, as the reference writer does) with optional metadata, atomically:
    /// the file appears complete under <paramref name="path"/> or not at all.
    /// </summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        // Each tensor is written from its own storage (a new handle, freed after its bytes are written; the caller keeps its tensor).
        var entries = tensors.Select(kv => new TensorEntry(kv.Key, kv.Value.dtype, kv.Value.shape, () => kv.Value.detach())).ToList();
        SaveStreamed(path, entries, metadata);
    }

    /// <summary>
    /// One tensor of a file written by <see cref="SaveStreamed"/>: its name, dtype and shape (the header is written
    /// first) and how to produce it when its turn comes. The writer disposes what <see cref="Produce"/> returns.
    /// </summary>
    public sealed record TensorEntry(string Name, ScalarType DType, long[] Shape, Func<Tensor> Produce)
    {
        public long Bytes => Shape.Aggregate(1L, (a, b) => a * b) * (ElementSize(FromScalarType(DType)) ?? throw new ArgumentException($"dtype {DType}"));
    }

    /// <summary>
    /// Write a file tensor by tensor: the header from the declared names, dtypes and shapes (names sorted, data in
    /// that order, as <see cref="Save"/> always wrote), then each tensor produced, its bytes written in chunks of at
    /// most 16 MiB straight from its storage, and freed before the next one is produced. Peak extra memory is the
    /// largest tensor produced, not the file. A produced tensor whose dtype or shape differs from its declaration is
    /// an error (the header would lie). Written to a temporary name and renamed (<see cref="AtomicFile.Write"/>).
    /// </summary>
    public static void SaveStreamed(string path, IReadOnlyList<TensorEntry> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        foreach (var t in ordered)
        {
            if (header.ContainsKey(t.Name)) throw new ArgumentException($"tensor '{t.Name}' is listed twice");
            long bytes = t.Bytes;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = FromScalarType(t.DType),
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - headerBytes.Length % 8) % 8; // the reference pads the header with spaces to 8 bytes
        var padded = new byte[headerBytes.Length + pad];
        headerBytes.CopyTo(padded, 0);
        for (int i = headerBytes.Length; i < padded.Length; i++) padded[i] = (byte)' ';

        AtomicFile.Write(path, fs =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded.Length);
            fs.Write(len);
            fs.Write(padded);
            foreach (var entry in ordered)
            {
                using var produced = entry.Produce();
                if (produced.dtype != entry.DType || !produced.shape.SequenceEqual(entry.Shape))
                    throw new InvalidOperationException(
                        $"tensor '{entry.Name}' was declared {entry.DType} [{string.Join(", ", entry.Shape)}] but produced {produced.dtype} [{string.Join(", ", produced.shape)}]");
                WriteBytes(fs, produced);
            }
        });
    }

    /// <summary>A tensor's bytes, from its own storage when it is contiguous on the CPU, in chunks (a span is at most 2 GiB).</summary>
    static void WriteBytes(Stream fs, Tensor t)
    {
        long count = t.numel();
        if (count == 0) return;
        using var scope = torch.NewDisposeScope();
        var cpu = t.device_type == DeviceType.CPU ? t.detach() : t.detach().cpu();
        if (!cpu.is_contiguous()) cpu = cpu.contiguous();
        var flat = cpu.reshape(-1);
        long chunk = Math.Max(1, (16L << 20) / cpu.ElementSize);
        for (long start = 0; start < count; start += chunk)
        {
            using var part = flat.narrow(0, start, Math.Min(chunk, count - start));
            fs.Write(part.bytes);
        }
    }

    public static int? ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "U8" or "I8" or "BOOL" => 1,
        _ => null,
    };

    public static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new PeftFormatException($"unsupported safetensors dtype '{dtype}'"),
    };

    public static string FromScalarType(ScalarType t) => t switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"dtype {t} cannot be written to safetensors"),
    };
}
