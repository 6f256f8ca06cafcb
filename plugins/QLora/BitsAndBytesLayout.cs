using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Peft.Abstractions;
using Peft.Abstractions.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// bitsandbytes' saved layout of a 4-bit linear (<c>Linear4bit._save_to_state_dict</c>, <c>QuantState.as_dict(packed=True)</c>)
/// and transformers' <c>quantization_config</c>:
/// <code>
///   {m}.weight                                 uint8 (ceil(n/2), 1)   packed codes, first element in the high nibble
///   {m}.weight.absmax                          uint8 (blocks) with double quantization, else fp32 (blocks)
///   {m}.weight.quant_map                       fp32 (16)              the code table
///   {m}.weight.nested_absmax                   fp32 (ceil(blocks/256))           (double quantization only)
///   {m}.weight.nested_quant_map                fp32 (256)             the dynamic map (double quantization only)
///   {m}.weight.quant_state.bitsandbytes__nf4   uint8                  json.dumps({"quant_type", "blocksize", "dtype",
///                                                                     "shape", "nested_blocksize", "nested_dtype", "nested_offset"})
/// </code>
/// </summary>
public static class BitsAndBytesLayout
{
    public const string QuantStatePrefix = "weight.quant_state.bitsandbytes__";

    public static IReadOnlyList<(string Suffix, Tensor Tensor)> Write(FourBitWeights w, Tensor? bias)
    {
        using var _ = torch.no_grad();
        var result = new List<(string, Tensor)>
        {
            ("weight", w.Packed.detach().cpu().clone()),
            ("weight.absmax", (w.Absmax ?? w.QuantizedAbsmax!).detach().cpu().clone()),
            ("weight.quant_map", torch.tensor(w.Codes)),
        };
        if (w.DoubleQuantized)
        {
            result.Add(("weight.nested_absmax", w.NestedAbsmax!.detach().cpu().clone()));
            result.Add(("weight.nested_quant_map", torch.tensor(w.NestedMap)));
        }
        var json = QuantStateJson(w);
        result.Add((QuantStatePrefix + FourBitCodebook.Name(w.Type), torch.tensor(Encoding.UTF8.GetBytes(json), dtype: ScalarType.Byte)));
        if (bias is not null) result.Add(("bias", bias.detach().cpu().clone()));
        return result;
    }

    /// <summary>Python's <c>json.dumps</c> of the non-tensor quant state, in bitsandbytes' key order (", " and ": " separators).</summary>
    public static string QuantStateJson(FourBitWeights w)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append("{\"quant_type\": \"").Append(FourBitCodebook.Name(w.Type)).Append("\", \"blocksize\": ").Append(w.BlockSize.ToString(inv))
          .Append(", \"dtype\": \"float32\", \"shape\": [").Append(w.OutFeatures.ToString(inv)).Append(", ").Append(w.InFeatures.ToString(inv)).Append(']');
        if (w.DoubleQuantized)
            sb.Append(", \"nested_blocksize\": ").Append(FourBitWeights.NestedBlockSize.ToString(inv))
              .Append(", \"nested_dtype\": \"float32\", \"nested_offset\": ").Append(PythonFloat(w.Offset));
        return sb.Append('}').ToString();
    }

    /// <summary>repr() of the Python float holding an fp32 value (shortest round-trip double).</summary>
    static string PythonFloat(float f)
    {
        double d = f;
        var s = d.ToString("R", CultureInfo.InvariantCulture);
        if (s.Contains('E')) s = s.Replace("E-0", "e-0").Replace("E-", "e-").Replace("E+", "e+");
        else if (!s.Contains('.')) s += ".0";
        return s;
    }

    /// <summary>transformers' BitsAndBytesConfig(load_in_4bit=True, ...).to_dict() for these options.</summary>
    public static JsonObject QuantizationConfig(FourBitType type, FourBitQuantizationOptions o, IReadOnlyList<string> skipped) => new()
    {
        ["_load_in_4bit"] = true,
        ["_load_in_8bit"] = false,
        ["bnb_4bit_compute_dtype"] = FourBitQuantizationOptions.ComputeDtypeToName(o.ComputeDtype),
        ["bnb_4bit_quant_storage"] = "uint8",
        ["bnb_4bit_quant_type"] = FourBitCodebook.Name(type),
        ["bnb_4bit_use_double_quant"] = o.DoubleQuant,
        ["llm_int8_enable_fp32_cpu_offload"] = false,
        ["llm_int8_has_fp16_weight"] = false,
        ["llm_int8_skip_modules"] = skipped.Count == 0 ? null : new JsonArray(skipped.Select(s => (JsonNode)s).ToArray()),
        ["llm_int8_threshold"] = 6.0,
        ["load_in_4bit"] = true,
        ["load_in_8bit"] = false,
        ["quant_method"] = "bitsandbytes",
    };

    /// <summary>The 4-bit type a transformers quantization_config describes, or null when it is not a bitsandbytes 4-bit config.</summary>
    public static FourBitType? TypeOf(JsonObject config)
    {
        if (config["quant_method"]?.GetValueKind() != JsonValueKind.String || config["quant_method"]!.GetValue<string>() != "bitsandbytes") return null;
        bool fourBit = Bool(config["load_in_4bit"]) || Bool(config["_load_in_4bit"]);
        if (!fourBit) return null;
        var name = config["bnb_4bit_quant_type"] is JsonValue v && v.TryGetValue<string>(out var s) ? s : "fp4";   // transformers' default
        return name switch { "nf4" => FourBitType.Nf4, "fp4" => FourBitType.Fp4, _ => null };
    }

    static bool Bool(JsonNode? n) => n is JsonValue v && v.TryGetValue<bool>(out var b) && b;

    /// <summary>Rebuild a layer's weights from its stored tensors, checking every size against the quant state.</summary>
    public static (FourBitWeights Weights, Tensor? Bias) Read(LinearSlot slot, IReadOnlyDictionary<string, Tensor> tensors)
    {
        string m = slot.Name;
        PeftDataException Bad(string suffix, string problem) => new($"{m}.{suffix}: {problem}");

        var stateKeys = tensors.Keys.Where(k => k.StartsWith(QuantStatePrefix, StringComparison.Ordinal)).ToList();
        if (stateKeys.Count != 1)
            throw Bad("weight.quant_state", stateKeys.Count == 0 ? "missing (a bitsandbytes 4-bit layer stores weight.quant_state.bitsandbytes__nf4 or __fp4)"
                                                              : $"found {stateKeys.Count} quant_state tensors ({string.Join(", ", stateKeys)}), expected one");
        var stateKey = stateKeys[0];
        var keyType = stateKey[QuantStatePrefix.Length..];
        JsonObject state;
        try
        {
            var raw = tensors[stateKey];
            if (raw.dtype != ScalarType.Byte) throw new FormatException($"dtype {raw.dtype}, expected uint8");
            using var flat = raw.cpu().contiguous();
            var text = new UTF8Encoding(false, true).GetString(flat.bytes);
            state = JsonNode.Parse(text)?.AsObject() ?? throw new FormatException("empty document");
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or DecoderFallbackException or ArgumentException)
        {
            throw Bad(stateKey, $"corrupt quant_state, not a JSON object ({e.Message.Split('\n')[0]})");
        }

        string Str(string key) => state[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw Bad(stateKey, $"quant_state key '{key}' is missing or not a string");
        long Int(string key) => state[key] is JsonValue v && v.TryGetValue<long>(out var i) ? i : throw Bad(stateKey, $"quant_state key '{key}' is missing or not an integer");

        var typeName = Str("quant_type");
        var type = typeName switch { "nf4" => FourBitType.Nf4, "fp4" => FourBitType.Fp4, _ => throw Bad(stateKey, $"quant_type '{typeName}' is not nf4 or fp4") };
        if (typeName != keyType) throw Bad(stateKey, $"quant_type '{typeName}' does not match the key's '{keyType}'");
        long block = Int("blocksize");
        if (block > int.MaxValue || !FourBitQuantizationOptions.IsValidBlockSize((int)block)) throw Bad(stateKey, $"blocksize {block} is not a power of two from 32 to 4096");
        if (state["shape"] is not JsonArray shape || shape.Count != 2 || shape.Any(x => x is not JsonValue))
            throw Bad(stateKey, "quant_state 'shape' is not a 2-D shape");
        long outF = shape[0]!.GetValue<long>(), inF = shape[1]!.GetValue<long>();
        if (outF != slot.OutFeatures || inF != slot.InFeatures)
            throw Bad(stateKey, $"shape [{outF}, {inF}] but the model's layer is [{slot.OutFeatures}, {slot.InFeatures}] (out, in)");

        long n = outF * inF, blocks = (n + block - 1) / block;
        Tensor Need(string suffix, ScalarType dtype, long count)
        {
            if (!tensors.TryGetValue(suffix, out var t)) throw Bad(suffix, "missing");
            if (t.dtype != dtype) throw Bad(suffix, $"dtype {t.dtype}, expected {dtype}");
            if (t.NumberOfElements != count) throw Bad(suffix, $"has {t.NumberOfElements} values, expected {count} ({n} weights in blocks of {block})");
            return t.detach().cpu().contiguous().flatten().clone();
        }

        var codes = FourBitCodebook.Codes(type);
        using (var map = Need("weight.quant_map", ScalarType.Float32, 16))
            if (!map.data<float>().ToArray().SequenceEqual(codes)) throw Bad("weight.quant_map", $"is not bitsandbytes' {typeName} code table");

        var packed = Need("weight", ScalarType.Byte, (n + 1) / 2).reshape((n + 1) / 2, 1);
        bool nested = tensors.ContainsKey("weight.nested_absmax") || state.ContainsKey("nested_offset");
        try
        {
            FourBitWeights w;
            if (!nested)
            {
                var absmax = Need("weight.absmax", ScalarType.Float32, blocks);
                CheckFinite(absmax, "weight.absmax");
                w = new FourBitWeights(type, (int)block, outF, inF, packed, absmax, null, null, 0f);
            }
            else
            {
                if (Int("nested_blocksize") != FourBitWeights.NestedBlockSize) throw Bad(stateKey, $"nested_blocksize {Int("nested_blocksize")} is not {FourBitWeights.NestedBlockSize}");
                double offset = state["nested_offset"] is JsonValue ov && ov.TryGetValue<double>(out var d) && double.IsFinite(d) ? d
                    : throw Bad(stateKey, "quant_state key 'nested_offset' is missing or not a finite number");
                var q = Need("weight.absmax", ScalarType.Byte, blocks);
                var nestedAbsmax = Need("weight.nested_absmax", ScalarType.Float32, (blocks + FourBitWeights.NestedBlockSize - 1) / FourBitWeights.NestedBlockSize);
                CheckFinite(nestedAbsmax, "weight.nested_absmax");
                float[] map;
                using (var mapT = Need("weight.nested_quant_map", ScalarType.Float32, 256)) map = mapT.data<float>().ToArray();
                if (map.Any(x => !float.IsFinite(x))) throw Bad("weight.nested_quant_map", "has non-finite values");
                if (map.SequenceEqual(DynamicQuantMap.Signed)) map = DynamicQuantMap.Signed;   // shared, not held per layer
                w = new FourBitWeights(type, (int)block, outF, inF, packed, null, q, nestedAbsmax, (float)offset, map);
            }
            Tensor? bias = null;
            if (tensors.TryGetValue("bias", out var b))
            {
                if (b.NumberOfElements != outF) throw Bad("bias", $"has {b.NumberOfElements} values, expected {outF}");
                bias = b;
            }
            return (w, bias);
        }
        catch
        {
            packed.Dispose();
            throw;
        }

        void CheckFinite(Tensor t, string suffix)
        {
            using var ok = torch.isfinite(t).all();
            if (!ok.item<bool>()) throw Bad(suffix, "has non-finite values");
        }
    }
}
