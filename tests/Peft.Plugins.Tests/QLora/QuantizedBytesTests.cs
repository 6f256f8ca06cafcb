using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Model;
using Peft.Abstractions.Quantization;
using Peft.Plugins.QLora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;

namespace Peft.Plugins.Tests.QLora;

/// <summary>
/// One count of a quantized weight's bytes (<see cref="IQuantizedWeightBytes.QuantizedBytes"/>): what the layer holds,
/// what the planner predicts (<see cref="IQuantizer.QuantizedBytes"/>) and what a layer read back from bitsandbytes'
/// saved layout holds are the same number, byte for byte, for NF4 and INT8.
/// </summary>
[Collection(QLoraSerialCollection.Name)]
public sealed class QuantizedBytesTests
{
    static IConfiguration Options(int block, bool dq) => new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
    {
        ["quantization:name"] = "nf4",
        ["quantization:block_size"] = block.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["quantization:double_quant"] = dq ? "true" : "false",
    }).Build().GetSection("quantization");

    [Theory]
    [InlineData(48, 40, 64, true)]      // 1920 weights, 30 blocks, 1 nested block
    [InlineData(9, 7, 64, true)]        // 63 weights: odd (one padding nibble), a short last block
    [InlineData(257, 300, 64, true)]    // 77,100 weights, 1,205 blocks: 5 nested blocks, the last one short
    [InlineData(257, 300, 128, false)]
    [InlineData(9, 7, 64, false)]
    public void Nf4_layer_holds_what_the_planner_predicts_and_a_reloaded_layer_holds_the_same(long inF, long outF, int block, bool dq)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        using var dense = TestLinear.Random(inF, outF);
        var quantizer = new Nf4Quantizer();
        var options = Options(block, dq);
        using var layer = quantizer.Quantize("layer", dense, FourBitQuantizationOptions.FromConfiguration(options));

        // What it holds, counted by hand: packed codes ceil(n/2), absmax (uint8 with dq, else fp32) per block,
        // with dq one fp32 nested absmax per 256 blocks and the fp32 offset.
        long n = inF * outF, blocks = (n + block - 1) / block;
        long expected = (n + 1) / 2 + (dq ? blocks + (blocks + 255) / 256 * 4 + 4 : blocks * 4);
        layer.QuantizedBytes.Should().Be(expected);
        long buffers = layer.named_buffers().Sum(b => b.buffer.NumberOfElements * b.buffer.ElementSize);
        layer.QuantizedBytes.Should().Be(buffers + (dq ? sizeof(float) : 0), "the module buffers plus the nested offset (a scalar)");

        var slot = new LinearSlot("layer", "layer", 0, LinearKind.AttentionQuery, inF, outF);
        var (codes, stats) = quantizer.QuantizedBytes(slot, options)!.Value;
        (codes + stats).Should().Be(layer.QuantizedBytes, "the planner predicts the count training reports");

        // Through bitsandbytes' saved layout (weight.quant_map and weight.nested_quant_map stored per layer): the
        // reloaded layer shares the standard tables again, so it holds exactly what the in-memory one holds.
        var saved = layer.CheckpointTensors();
        var (weights, _) = BitsAndBytesLayout.Read(slot, saved.ToDictionary(t => t.Suffix, t => t.Tensor));
        weights.StorageBytes.Should().Be(layer.QuantizedBytes);
        weights.Dispose();
    }

    [Fact]
    public void A_reloaded_layer_with_its_own_nested_map_counts_the_map_it_holds()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(12);
        using var dense = TestLinear.Random(64, 32);
        using var layer = new Nf4Quantizer().Quantize("layer", dense, new FourBitQuantizationOptions());
        var slot = new LinearSlot("layer", "layer", 0, LinearKind.AttentionQuery, 64, 32);
        var saved = layer.CheckpointTensors().ToDictionary(t => t.Suffix, t => t.Tensor);
        saved["weight.nested_quant_map"] = saved["weight.nested_quant_map"] * 0.5f;   // not bitsandbytes' map
        var (weights, _) = BitsAndBytesLayout.Read(slot, saved);
        weights.StorageBytes.Should().Be(layer.QuantizedBytes + 256 * sizeof(float), "a map of its own is held by the layer");
        weights.Dispose();
    }

    [Fact]
    public void Int8_layer_holds_what_the_planner_predicts()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(13);
        using var dense = TestLinear.Random(48, 40);
        var quantizer = new Int8Quantizer();
        var options = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["quantization:name"] = "int8" })
            .Build().GetSection("quantization");
        var layer = (IQuantizedWeightBytes)quantizer.Quantize("layer", dense, options);
        var slot = new LinearSlot("layer", "layer", 0, LinearKind.AttentionQuery, 48, 40);
        var (codes, stats) = quantizer.QuantizedBytes(slot, options)!.Value;
        layer.QuantizedBytes.Should().Be(codes + stats).And.Be(48 * 40 + 40 * 4);
        ((ILinearLayer)layer).Module.Dispose();
    }
}
