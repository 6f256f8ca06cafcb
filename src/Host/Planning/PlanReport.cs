using System.Globalization;
using System.Text.Json.Nodes;

namespace Peft.Host.Planning;

/// <summary>A plan as text (a table) or as one JSON document (byte counts under snake_case keys, and total_bytes).</summary>
public static class PlanReport
{
    public static string Gb(long bytes) => (bytes / 1e9).ToString(bytes >= 100e9 ? "0.00" : "0.000", CultureInfo.InvariantCulture) + " GB";

    public static string Dtype(int bytes) => bytes switch { 2 => "bf16", 4 => "fp32", 1 => "int8", _ => $"{bytes} bytes" };

    public static string SettingsLine(MemoryPlan p)
    {
        var s = p.Settings;
        if (p.SeedAssumptions) return "the seed's assumptions (16-bit base, 16-bit adapters + 12 bytes of fp32 m, v, master per trainable parameter)";
        var precision = s.Precision == PlanPrecision.Fp32 ? "fp32 trainable weights, gradients and optimizer state"
            : $"mixed precision (bf16 trainable weights and gradients{(s.MasterWeights ? ", fp32 master copy" : "")}, {Dtype(s.OptimizerDtypeBytes)} optimizer state)";
        var batch = s.BatchSize == 0 ? "no activations (batch 0)"
            : $"batch {s.BatchSize} x {s.SeqLen} tokens per GPU, {Dtype(s.ActivationDtypeBytes)} activations{(s.ActivationCheckpointing ? ", activation checkpointing" : "")}";
        return $"base weights {Dtype(s.BaseDtypeBytes)}; {precision}; {batch}";
    }

    public static void WriteTable(TextWriter o, MemoryPlan p)
    {
        var s = p.Settings;
        var perGpu = p.PerGpu;
        o.WriteLine($"{p.Model}: {p.Label}");
        o.WriteLine("  " + SettingsLine(p));
        o.WriteLine(Inv($"  parameters: {p.TotalParameters:N0} in the model, {p.TrainableParameters:N0} trainable ({100.0 * p.TrainableParameters / Math.Max(1, p.TotalParameters):0.###}%)")
                    + (p.ActiveTrainableParameters != p.TrainableParameters ? Inv($", {p.ActiveTrainableParameters:N0} at once") : ""));
        string perHeader = $"per GPU ({s.Gpus} GPU{(s.Gpus == 1 ? "" : "s")}, ZeRO-{s.ZeroStage})";
        o.WriteLine($"  {"component",-30} {"total",14} {perHeader,30}");
        var rows = p.Bytes.Rows();
        var gpuRows = perGpu.Rows();
        for (int i = 0; i < rows.Count; i++)
        {
            if (rows[i].Bytes == 0 && rows[i].Key is "quantization_statistics_bytes" or "projection_bytes" or "master_weight_bytes") continue;
            o.WriteLine($"  {rows[i].Label,-30} {Gb(rows[i].Bytes),14} {Gb(gpuRows[i].Bytes),30}");
        }
        o.WriteLine($"  {"total",-30} {Gb(p.Bytes.TotalBytes),14} {Gb(perGpu.TotalBytes),30}");
        if (s.GpuMemoryBytes is { } mem)
        {
            var min = p.MinimumGpus(s.ZeroStage);
            var min3 = p.MinimumGpus(3);
            o.WriteLine($"  {(p.Fits == true ? "fits" : "does not fit")} on {s.Gpus} x {Gb(mem)} GPU{(s.Gpus == 1 ? "" : "s")} at ZeRO-{s.ZeroStage}; " +
                        $"minimum GPUs of {Gb(mem)}: {(min is { } n ? n.ToString(CultureInfo.InvariantCulture) : "none")} at ZeRO-{s.ZeroStage}" +
                        (s.ZeroStage != 3 ? $", {(min3 is { } n3 ? n3.ToString(CultureInfo.InvariantCulture) : "none")} at ZeRO-3" : ""));
        }
        foreach (var src in p.Sources) o.WriteLine($"  source: {src}");
        foreach (var n in p.Notes) o.WriteLine($"  note: {n}");
    }

    public static JsonObject ToJson(MemoryPlan p)
    {
        var s = p.Settings;
        JsonObject Components(MemoryComponents c)
        {
            var o = new JsonObject();
            foreach (var (key, _, bytes) in c.Rows()) o[key] = bytes;
            o["total_bytes"] = c.TotalBytes;
            return o;
        }
        var json = new JsonObject
        {
            ["model"] = p.Model,
            ["method"] = p.Label,
            ["seed_assumptions"] = p.SeedAssumptions,
            ["settings"] = new JsonObject
            {
                ["precision"] = s.Precision == PlanPrecision.Fp32 ? "fp32" : "mixed",
                ["base_dtype_bytes"] = s.BaseDtypeBytes,
                ["activation_dtype_bytes"] = s.ActivationDtypeBytes,
                ["master_weights"] = s.HasMasterCopy,
                ["batch_size"] = s.BatchSize,
                ["seq_len"] = s.SeqLen,
                ["activation_checkpointing"] = s.ActivationCheckpointing,
                ["gpus"] = s.Gpus,
                ["zero_stage"] = s.ZeroStage,
                ["gpu_memory_bytes"] = s.GpuMemoryBytes,
            },
            ["total_parameters"] = p.TotalParameters,
            ["trainable_parameters"] = p.TrainableParameters,
            ["active_trainable_parameters"] = p.ActiveTrainableParameters,
        };
        foreach (var (key, value) in Components(p.Bytes)) json[key] = value?.DeepClone();
        if (p.QuantizedBaseCodeBytes > 0) json["quantized_base_code_bytes"] = p.QuantizedBaseCodeBytes; // part of base_weight_bytes
        if (p.Activations is { } a)
            json["activations"] = new JsonObject { ["decoder_bytes"] = a.DecoderBytes, ["head_bytes"] = a.HeadBytes, ["upcast_weight_bytes"] = a.UpcastWeightBytes };
        json["per_gpu"] = Components(p.PerGpu);
        if (s.GpuMemoryBytes is not null)
        {
            json["fits"] = p.Fits;
            json["min_gpus"] = p.MinimumGpus(s.ZeroStage);
            json["min_gpus_zero3"] = p.MinimumGpus(3);
        }
        json["sources"] = new JsonArray(p.Sources.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray());
        json["notes"] = new JsonArray(p.Notes.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray());
        return json;
    }

    static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
