using Peft.Abstractions;

namespace Peft.Host.Planning;

/// <summary>What the seed's arithmetic needs: the method, the nominal size, and its knobs.</summary>
public sealed record SeedInputs(string Method, int Rank = 16, int AdaptedMatricesPerLayer = 4, int LisaK = 2, int GaloreRank = 128,
    int GaloreMatricesPerLayer = 7, string? Quantize = null);

/// <summary>
/// The seed's memory budgets (../shared/seed/000_*.txt), reproduced with its own simplifications so its numbers can
/// be checked (<c>peft plan --seed-assumptions</c>): N nominal parameters (70e9 for "70B"), 16-bit base, every
/// adapted matrix d_model × d_model (no grouped-query attention), 16-bit adapters with 12 bytes of fp32
/// m + v + master per trainable parameter, no activations except QLoRA's 6.4 GB guess, GaLore's two-sided r × r
/// state. docs/planner.md lists where each of these is wrong and what the default (corrected) plan does instead.
/// </summary>
public static class SeedBudget
{
    /// <summary>The seed's QLoRA table: "NF4 base 35.6 GB" for 70e9 weights (35 GB of 4-bit codes + its 0.57 GB of scales, rounded up).</summary>
    public const double SeedNf4BaseBytesPer70B = 35.6e9;

    /// <summary>The seed's QLoRA activations: "Activations (6.4)" GB, for a batch and length it never states.</summary>
    public const double SeedQloraActivationBytes = 6.4e9;

    public static MemoryPlan Plan(PlanModel model, SeedInputs i, PlanSettings settings)
    {
        double n = model.NominalParameters ?? model.TotalParameters;
        long d = model.Shape.HiddenSize, layers = model.Shape.NumHiddenLayers;
        var method = i.Method.ToLowerInvariant();
        var notes = new List<string> { "the seed's simplified arithmetic (--seed-assumptions); the default plan corrects it (docs/planner.md)" };
        long N = (long)Math.Round(n);

        // LoRA: params_per_matrix = 2 * d_model * rank (square matrices, no GQA); fp16 weights + fp16 grads + 12 bytes of fp32 m, v, master
        long AdapterParams(bool dora) => i.AdaptedMatricesPerLayer * layers * (2 * d * i.Rank + (dora ? d : 0));
        MemoryComponents Adapter(long p, long baseBytes, long stats = 0, long acts = 0) => new()
        {
            BaseWeightBytes = baseBytes, QuantizationStatisticsBytes = stats, TrainableWeightBytes = 2 * p, GradientBytes = 2 * p,
            OptimizerStateBytes = 8 * p, MasterWeightBytes = 4 * p, ActivationBytes = acts,
        };
        long trainable, active;
        MemoryComponents bytes;
        switch (method)
        {
            case "full":
                // 2 (fp16 weight) + 2 (fp16 grad) + 4 (master) + 4 (m) + 4 (v) = 16 bytes per parameter
                trainable = active = N;
                bytes = new() { TrainableWeightBytes = 2 * N, GradientBytes = 2 * N, OptimizerStateBytes = 8 * N, MasterWeightBytes = 4 * N };
                break;
            case "lora":
            case "dora":
                trainable = active = AdapterParams(method == "dora");
                bytes = Adapter(trainable, 2 * N);
                break;
            case "qlora":
            case "qlora+dora":
            {
                trainable = active = AdapterParams(method == "qlora+dora");
                long baseTotal = (long)Math.Round(SeedNf4BaseBytesPer70B * n / 70e9), codes = N / 2;
                bytes = Adapter(trainable, codes, baseTotal - codes, (long)SeedQloraActivationBytes);
                notes.Add("the seed's NF4 base is its table's 35.6 GB per 70B (35 GB of codes + its 0.57 GB of scales, rounded); its activations are its 6.4 GB guess");
                break;
            }
            case "galore":
            {
                // base fp16 + full fp16 gradients + r*r*(4+4) per matrix + P [d, r] + Q [d, r] in fp16 per matrix
                long matrices = i.GaloreMatricesPerLayer * layers;
                long r = i.GaloreRank;
                bool int8 = string.Equals(i.Quantize, "int8", StringComparison.OrdinalIgnoreCase);
                trainable = active = N;
                bytes = new()
                {
                    TrainableWeightBytes = (int8 ? 1 : 2) * N, GradientBytes = 2 * N,
                    OptimizerStateBytes = matrices * r * r * 8, ProjectionBytes = matrices * 2 * d * r * 2,
                };
                notes.Add("the seed's GaLore code gives projections 2·d·r·2 bytes per matrix = " +
                          $"{bytes.ProjectionBytes / 1e9:0.00} GB; its printed 18.35 GB (and 298.42 GB total) do not follow from it");
                if (int8) notes.Add("the seed's GaLore on INT8: the base at 1 byte per weight, the rest as above (\"approximately 210 GB\")");
                break;
            }
            case "lisa":
            {
                // active = k/L * N; optimizer 12 bytes (m, v, master) and fp16 gradients for the active share
                trainable = N;
                active = (long)Math.Round(n * i.LisaK / layers);
                bytes = new() { TrainableWeightBytes = 2 * N, GradientBytes = 2 * active, OptimizerStateBytes = 8 * active, MasterWeightBytes = 4 * active };
                break;
            }
            default:
                throw new PeftConfigurationException("--method", i.Method, "the seed gives no memory arithmetic for this method (it has: full, lora, dora, qlora, qlora+dora, galore, galore on int8, lisa)");
        }
        if (i.Quantize is not null && method != "galore" && !(method.StartsWith("qlora", StringComparison.Ordinal) && i.Quantize == "nf4"))
            throw new PeftConfigurationException("--quantize", i.Quantize, $"the seed's arithmetic has no {i.Quantize} base for {i.Method}");
        return new MemoryPlan
        {
            Model = model.Name,
            Label = i.Method + (method == "galore" && i.Quantize is not null ? $" + {i.Quantize}" : ""),
            Settings = settings,
            TotalParameters = N,
            TrainableParameters = trainable,
            ActiveTrainableParameters = active,
            Bytes = bytes,
            Sources = ["the seed's formulas (../shared/seed/000_20695f396bf2c68f.txt)"],
            Notes = notes,
            SeedAssumptions = true,
        };
    }
}
