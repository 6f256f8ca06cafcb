using System.Text.Json.Nodes;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Evaluation;
using Peft.Host.Model;
using Peft.Tests.Import;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.EndToEnd;

/// <summary>
/// Is the NF4 loss gap of stories260K (≈ 0.12 nats, above the 0.05 sanity bound) a bug or the 4-bit grid?
/// The CLI's <c>eval --quantize nf4</c> is compared with an independent NF4 written here from bitsandbytes' code table
/// (nf4_reference_from_bitsandbytes.json) with plain torch ops: same loss, so the quantizer, the layer and the
/// choice of layers (decoder projections only; embedding and tied head untouched) are right, and the gap is what
/// 16 levels cost a 64-wide model. The same pipeline with 8 bits (<c>int8</c>) stays inside the 0.05 bound.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class Nf4AccuracyOnStories260KTests(Stories260KFixture fx)
{
    /// <summary>bitsandbytes <c>get_4bit_type('nf4')</c> (nf4_reference_from_bitsandbytes.json, nf4_code_table).</summary>
    static readonly float[] Nf4Codes =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    /// <summary>deq(q(W)) by definition: row-major blocks, absmax per block, scaled by 1/absmax, nearest code (first = lower on a tie).</summary>
    static Tensor ReferenceNf4(Tensor w, int block)
    {
        using var scope = torch.NewDisposeScope();
        var flat = w.detach().to(ScalarType.Float32).flatten();
        flat.shape[0].Should().Be(flat.shape[0] / block * block, "stories260K's matrices are whole blocks");
        var blocks = flat.view(-1, block);
        var absmax = blocks.abs().amax([1], keepdim: true);
        var scaled = (blocks * absmax.clamp_min(1e-38).reciprocal()).clamp(-1, 1);
        var codes = torch.tensor(Nf4Codes);
        var idx = (scaled.unsqueeze(-1) - codes).abs().argmin(-1);
        return (codes.index_select(0, idx.flatten()).view(blocks.shape) * absmax).view(w.shape).MoveToOuterDisposeScope();
    }

    static double Cli(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        CommandLine.Run(args, new CliContext(stdout, stderr)).Should().Be(0, stderr.ToString());
        return JsonNode.Parse(stdout.ToString().TrimEnd().Split('\n')[^1])!["loss"]!.GetValue<double>();
    }

    [Fact]
    public void The_nf4_gap_is_the_4bit_grid_not_a_bug_and_8_bits_stay_inside_the_bound()
    {
        var data = fx.NewDir("eval") + ".txt";
        File.WriteAllText(data, File.ReadAllText(TestData.Repo("tinystories/tinystories_train_head.txt"))[..6000]);
        double fp32 = Cli("eval", "--model", fx.ModelDir, "--data", data, "--json");
        double nf4 = Cli("eval", "--model", fx.ModelDir, "--data", data, "--json", "--quantize", "nf4", "--double-quant", "false");
        double int8 = Cli("eval", "--model", fx.ModelDir, "--data", data, "--json", "--quantize", "int8");

        // the independent reference: every decoder projection replaced by its NF4 round trip, nothing else touched
        using var model = HfModelFolder.Load(fx.ModelDir);
        var tokenizer = fx.Tokenizer;
        double relativeError = 0;
        int quantized = 0;
        using (torch.no_grad())
            foreach (var slot in model.LinearSlots.Where(s => s.IsDecoderProjection))
            {
                var layer = model.GetLinear(slot.Name);
                using var w = layer.DenseWeight();
                using var deq = ReferenceNf4(w, 64);
                relativeError += (deq - w).norm().item<float>() / w.norm().item<float>();
                layer.SetDenseWeight(deq);
                quantized++;
            }
        quantized.Should().Be(5 * 7, "q, k, v, o, gate, up, down of each of the 5 layers; embedding and tied head stay fp32");
        double reference = Evaluator.Evaluate(model, tokenizer, EvalDocuments.Read(data)).Loss;

        reference.Should().BeApproximately(nf4, 1e-4, "the CLI's NF4 is bitsandbytes' NF4 on exactly the decoder projections");
        (nf4 - fp32).Should().BeInRange(0.05, 0.2,
            $"fp32 {fp32:F4}, nf4 {nf4:F4}: 16 levels per 64-wide block cost a 260K model ~0.12 nats " +
            $"(mean ‖deq(W) − W‖/‖W‖ = {relativeError / quantized:F3} per layer)");
        (int8 - fp32).Should().BeInRange(-0.01, 0.05, $"fp32 {fp32:F4}, int8 {int8:F4}: the same pipeline with 8 bits is inside the sanity bound");
    }
}
