using System.Text.Json.Nodes;
using Peft.Host.Formats;
using Peft.Tests.Import;
using Peft.Tests.Reliability;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// `peft analyze` on hand-made PEFT adapters (LoRA and DoRA on every q_proj of stories260K): ΔM and ΔD per layer
/// recomputed here in plain C# from the base weights and the adapter's tensors (W' = W0 + s·B·A; DoRA:
/// W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖ per output row), with the paper's column = one output feature.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class AnalyzeCommandTests(Stories260KFixture fx)
{
    const int Rank = 2;
    const double Alpha = 4, Scaling = Alpha / Rank;

    static double[,] ToArray(Tensor t)
    {
        using var d = t.to(ScalarType.Float64).contiguous();
        var flat = d.data<double>().ToArray();
        int rows = (int)t.shape[0], cols = (int)t.shape[1];
        var a = new double[rows, cols];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) a[i, j] = flat[i * cols + j];
        return a;
    }

    /// <summary>ΔM, ΔD by the paper's definition, one output feature (row of the torch weight) at a time.</summary>
    static (double M, double D) Expected(double[,] w0, double[,] w1)
    {
        int rows = w0.GetLength(0), cols = w0.GetLength(1);
        double dm = 0, dd = 0;
        for (int i = 0; i < rows; i++)
        {
            double n0 = 0, n1 = 0, dot = 0;
            for (int j = 0; j < cols; j++) { n0 += w0[i, j] * w0[i, j]; n1 += w1[i, j] * w1[i, j]; dot += w0[i, j] * w1[i, j]; }
            n0 = Math.Sqrt(n0); n1 = Math.Sqrt(n1);
            dm += Math.Abs(n1 - n0);
            dd += 1 - dot / (n0 * n1);
        }
        return (dm / rows, dd / rows);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Analyze_gives_the_delta_M_and_delta_D_of_a_hand_made_adapter(bool dora)
    {
        var dir = fx.NewDir(dora ? "dora-adapter" : "lora-adapter");
        Directory.CreateDirectory(dir);
        int layers = fx.Model.Config.NumHiddenLayers;
        var tensors = new Dictionary<string, Tensor>();
        var expected = new List<(double M, double D)>();
        for (int l = 0; l < layers; l++)
        {
            var prefix = $"base_model.model.model.layers.{l}.self_attn.q_proj";
            var w0 = ToArray(fx.Model.GetLinear($"model.layers.{l}.self_attn.q_proj").DenseWeight());
            int outF = w0.GetLength(0), inF = w0.GetLength(1);
            var rng = new Random(100 + l);
            var a = new double[Rank, inF];
            var b = new double[outF, Rank];
            for (int r = 0; r < Rank; r++) for (int j = 0; j < inF; j++) a[r, j] = (float)(rng.NextDouble() - 0.5) * 0.2;
            for (int i = 0; i < outF; i++) for (int r = 0; r < Rank; r++) b[i, r] = (float)(rng.NextDouble() - 0.5) * 0.2;
            var w1 = new double[outF, inF];
            for (int i = 0; i < outF; i++)
                for (int j = 0; j < inF; j++)
                {
                    double delta = 0;
                    for (int r = 0; r < Rank; r++) delta += b[i, r] * a[r, j];
                    w1[i, j] = (double)(float)w0[i, j] + Scaling * delta;
                }
            tensors[$"{prefix}.lora_A.weight"] = torch.tensor(a.Cast<double>().Select(x => (float)x).ToArray(), [Rank, inF]);
            tensors[$"{prefix}.lora_B.weight"] = torch.tensor(b.Cast<double>().Select(x => (float)x).ToArray(), [outF, Rank]);
            if (dora)
            {
                // m: the row norms of W0 + sBA, each scaled by a factor of its own, so magnitude and direction both move
                var m = new float[outF];
                for (int i = 0; i < outF; i++)
                {
                    double norm = 0;
                    for (int j = 0; j < inF; j++) norm += w1[i, j] * w1[i, j];
                    m[i] = (float)(Math.Sqrt(norm) * (0.8 + 0.4 * rng.NextDouble()));
                    double s = m[i] / Math.Sqrt(norm);
                    for (int j = 0; j < inF; j++) w1[i, j] *= s;
                }
                tensors[$"{prefix}.lora_magnitude_vector"] = torch.tensor(m);
            }
            expected.Add(Expected(w0, w1));
        }
        Safetensors.Save(Path.Combine(dir, "adapter_model.safetensors"), tensors);
        foreach (var t in tensors.Values) t.Dispose();
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), $$"""
        { "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": {{Rank}}, "lora_alpha": {{Alpha}}, "lora_dropout": 0.0,
          "target_modules": ["q_proj"], "bias": "none", "fan_in_fan_out": false, "use_rslora": false,
          "use_dora": {{(dora ? "true" : "false")}}, "base_model_name_or_path": "stories260K" }
        """);

        var run = RunKit.Peft("analyze", "--model", fx.ModelDir, "--adapter", dir, "--modules", "q_proj", "--json");
        run.Code.Should().Be(0, run.Err);
        var report = JsonNode.Parse(run.Out.TrimEnd().Split('\n')[^1])!.AsObject();
        var points = report["points"]!.AsArray().Select(p => p!.AsObject()).ToList();
        points.Should().HaveCount(layers);
        for (int l = 0; l < layers; l++)
        {
            var p = points.Single(x => x["layer"]!.GetValue<int>() == l);
            p["module"]!.GetValue<string>().Should().Be("q_proj");
            // fp32 merge in the plugin vs float64 here: agree to float32 rounding of the weights
            p["delta_m"]!.GetValue<double>().Should().BeApproximately(expected[l].M, 1e-5 + 1e-4 * expected[l].M, $"layer {l}");
            p["delta_d"]!.GetValue<double>().Should().BeApproximately(expected[l].D, 1e-6 + 1e-3 * expected[l].D, $"layer {l}");
            p["delta_d"]!.GetValue<double>().Should().BeGreaterThan(1e-6, "the hand-made update turns the rows");
        }
        // the correlation is Pearson's r of the (ΔD, ΔM) points
        double rExpected = Pearson(expected.Select(e => e.D).ToList(), expected.Select(e => e.M).ToList());
        report["correlation"]!["q_proj"]!.GetValue<double>().Should().BeApproximately(rExpected, 1e-3);
        run.Out.Should().Contain("| adapter | q_proj |");
    }

    static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        double mx = x.Average(), my = y.Average();
        double sxy = x.Zip(y, (a, b) => (a - mx) * (b - my)).Sum();
        return sxy / Math.Sqrt(x.Sum(a => (a - mx) * (a - mx)) * y.Sum(b => (b - my) * (b - my)));
    }

    [Fact]
    public void Analyze_refuses_two_sources_or_none()
    {
        var r = RunKit.Peft("analyze", "--model", fx.ModelDir);
        RunKit.ShouldBeACleanRefusal(r.Code, r.Err, "--adapter", "--trained");
    }
}
