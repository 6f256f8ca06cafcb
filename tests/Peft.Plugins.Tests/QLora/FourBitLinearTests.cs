using Peft.Abstractions.Model;
using Peft.Host.Training;
using Peft.Plugins.QLora;
using Peft.Plugins.Tests.Fakes;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.Tests.QLora;

/// <summary>The quantized linear layer: forward/backward against the dense formula, storage held, ownership.</summary>
[Collection(QLoraSerialCollection.Name)]
public sealed class FourBitLinearTests
{
    static FourBitLinear Quantize(ILinearLayer layer, string dtype = "float32", bool dq = true, int block = 64) =>
        new Nf4Quantizer().Quantize("layer", layer, new FourBitQuantizationOptions { DoubleQuant = dq, BlockSize = block, ComputeDtypeName = dtype });

    [Fact]
    public void Forward_and_input_gradient_equal_the_dense_formula_with_the_dequantized_weight()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(7);
        using var dense = TestLinear.Random(48, 40, withBias: true);
        using var q = Quantize(dense);
        var w = q.DenseWeight();                          // deq(W) (out, in)
        var x = torch.randn(3, 5, 48).requires_grad_(true);
        var y = q.forward(x);
        var expected = torch.nn.functional.linear(x.detach(), w, dense.Bias);
        TestTensors.MaxAbsDiff(y, expected).Should().BeLessThan(1e-5);

        var g = torch.randn(3, 5, 40);
        y.backward([g]);
        TestTensors.MaxAbsDiff(x.grad!, g.matmul(w)).Should().BeLessThan(1e-5, "dL/dx = dL/dy · deq(W)");
        q.parameters().Should().OnlyContain(p => !p.requires_grad && ReferenceEquals(p.grad, null), "the 4-bit base gets no weight gradient");
        // The dequantized weight is close to the original (NF4 error of N(0, 0.05^2) weights).
        TestTensors.MaxAbsDiff(w, dense.Weight).Should().BeLessThan(0.05 * 4 * 0.16);
    }

    [Theory]
    [InlineData(3, 5)]     // 15 tokens < 48 inputs
    [InlineData(8, 16)]    // 128 tokens ≥ 48 inputs
    public void Training_gives_the_dense_formula_and_no_weight_gradient_for_few_and_many_tokens(int batch, int seq)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(9);
        using var dense = TestLinear.Random(48, 40, withBias: true);
        using var q = Quantize(dense);
        var w = q.DenseWeight();
        var x = torch.randn(batch, seq, 48).requires_grad_(true);
        var y = q.forward(x);
        TestTensors.MaxAbsDiff(y, torch.nn.functional.linear(x.detach(), w, dense.Bias)).Should().BeLessThan(1e-5);
        var g = torch.randn(batch, seq, 40);
        y.backward([g]);
        TestTensors.MaxAbsDiff(x.grad!, g.matmul(w)).Should().BeLessThan(1e-5, "dL/dx = dL/dy · deq(W)");
        q.parameters().Should().OnlyContain(p => ReferenceEquals(p.grad, null));
        // and the packed bytes are untouched by training
        TestTensors.MaxAbsDiff(q.DenseWeight(), w).Should().Be(0);
    }

    [Fact]
    public void Bf16_compute_is_close_to_fp32_compute_and_returns_the_input_dtype()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(8);
        using var dense = TestLinear.Random(64, 32);
        using var q32 = Quantize(dense);
        using var q16 = Quantize(dense, "bfloat16");
        var x = torch.randn(4, 64);
        var y16 = q16.forward(x);
        y16.dtype.Should().Be(ScalarType.Float32);
        var y32 = q32.forward(x);
        TestTensors.MaxAbsDiff(y16, y32).Should().BeLessThan(0.02).And.BeGreaterThan(0);
    }

    [Fact]
    public void The_layer_holds_only_packed_bytes_and_statistics_and_shares_nothing_with_the_replaced_layer()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(9);
        var dense = TestLinear.Random(256, 128);
        var q = Quantize(dense);
        var weight = dense.Weight;
        dense.Dispose();                                  // the caller frees the layer a quantizer replaced
        weight.IsInvalid.Should().BeTrue("the fp32 weight is gone");
        using var after = q.DenseWeight();                // still works: no storage shared with the freed layer
        after.abs().max().item<float>().Should().BeGreaterThan(0);

        // Buffers actually held: 128*256/2 packed bytes + 512 uint8 absmax + 2 fp32 nested absmax (+ 4-byte offset).
        var buffers = q.named_buffers().ToDictionary(b => b.name, b => b.buffer);
        buffers.Keys.Should().BeEquivalentTo("weight", "absmax", "nested_absmax");
        long bytes = buffers.Values.Sum(b => b.NumberOfElements * b.ElementSize) + sizeof(float);
        bytes.Should().Be(q.WeightStorageBytes).And.Be(16384 + 512 + 8 + 4);
        (8.0 * bytes / (128 * 256)).Should().BeApproximately(FourBitQuantizer.BitsPerParameter(64, true), 0.001);
        q.parameters().Should().BeEmpty("no bias, and the weight is a buffer, not a parameter");
        q.Dispose();
    }

    [Fact]
    public void Set_dense_weight_requantizes_in_place()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(10);
        using var dense = TestLinear.Random(64, 16);
        using var q = Quantize(dense);
        var packed = q.Weights.Packed;
        var target = torch.randn(16, 64);
        q.SetDenseWeight(target);
        ReferenceEquals(q.Weights.Packed, packed).Should().BeTrue("the registered buffers are reused");
        using var other = Quantize(new TestLinear(target));
        TestTensors.Identical(q.Weights.Packed, other.Weights.Packed).Should().BeTrue();
        TestTensors.Identical(q.DenseWeight(), other.DenseWeight()).Should().BeTrue();
    }

    [Fact]
    public void Forward_and_backward_leak_no_tensors()
    {
        torch.manual_seed(12);
        using var dense = TestLinear.Random(32, 24);
        using var q = Quantize(dense);
        var live = new List<long>();
        for (int step = 0; step < 4; step++)
        {
            using (var scope = torch.NewDisposeScope())
            {
                var x = torch.randn(2, 32).requires_grad_(true);
                q.forward(x).sum().backward();
                q.forward(x.detach()).sum();
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        live.Skip(1).Should().OnlyContain(c => c == live[0], "the scratch buffer is made once; every other temporary is disposed");
    }

    [Fact]
    public void A_training_forward_keeps_neither_a_dequantized_weight_nor_an_output_sized_buffer_for_backward()
    {
        // Live C-heap bytes (glibc mallinfo2) across a training forward of a 1024 × 1024 NF4 layer on 4096 tokens:
        // only the output y (16 MiB) may stay. Keeping deq(W) for backward would add 4 MiB; keeping TorchSharp's
        // output-shaped buffer of the function node would add another 16 MiB. (This collection runs alone.)
        ProcessMemory.HeapInUse().Should().NotBeNull("the tests run on Linux with glibc ≥ 2.33");
        torch.manual_seed(13);
        using var dense = TestLinear.Random(1024, 1024);
        using var q = Quantize(dense);
        using var x = torch.randn(4096, 1024).requires_grad_(true);
        using (var warm = torch.NewDisposeScope()) q.forward(x).sum().backward();   // the scratch buffer is made once
        x.grad!.zero_();   // the input gradient stays allocated (before the measurement) and is written again below
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = ProcessMemory.HeapInUse()!.Value;
        using var y = q.forward(x);
        long kept = ProcessMemory.HeapInUse()!.Value - before;
        long output = y.NumberOfElements * 4, weight = 1024L * 1024 * 4;
        kept.Should().BeGreaterThanOrEqualTo(output - (1 << 20), "the output itself is alive")
            .And.BeLessThan(output + weight / 2, "nothing but the output is kept: no deq(W), no output-sized buffer");

        // and backward still gives dL/dx = dL/dy · deq(W)
        y.backward([torch.ones_like(y)]);
        TestTensors.MaxAbsDiff(x.grad!, torch.ones(4096, 1024).matmul(q.DenseWeight())).Should().BeLessThan(1e-3);
    }

    [Theory]
    [InlineData("stories260K")]   // dim 64, 5 layers, 8 heads, 4 kv heads, ffn 172
    [InlineData("stories15M")]    // dim 288, 6 layers, 6 heads, ffn 768
    public void Storage_read_from_held_tensors_is_at_most_4_2_bits_with_and_4_5_without_double_quantization(string name)
    {
        var shape = name == "stories260K" ? new ModelShape(64, 5, 8, 4, 172, 512, 512, true) : new ModelShape(288, 6, 6, 6, 768, 32000, 256, true);
        foreach (var dq in new[] { true, false })
        {
            var model = new FakeLlamaModel(shape);
            long weights = 0, bytes = 0;
            var quantizer = new Nf4Quantizer();
            var options = new FourBitQuantizationOptions { DoubleQuant = dq };
            foreach (var slot in model.LinearSlots.Where(s => s.IsDecoderProjection))
            {
                var old = model.GetLinear(slot.Name);
                var q = quantizer.Quantize(slot.Name, old, options);
                model.SetLinear(slot.Name, q);
                old.Module.Dispose();
                weights += slot.Parameters;
                bytes += q.named_buffers().Sum(x => x.buffer.NumberOfElements * x.buffer.ElementSize) + (dq ? sizeof(float) : 0);
            }
            double bits = 8.0 * bytes / weights;
            bits.Should().BeLessThanOrEqualTo(dq ? 4.2 : 4.5, $"dq={dq}, {weights} weights in {bytes} bytes");
            foreach (var slot in model.LinearSlots) model.GetLinear(slot.Name).Module.Dispose();
        }
    }
}
