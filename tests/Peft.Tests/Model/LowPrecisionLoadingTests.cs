using Peft.Host.Formats;
using Peft.Host.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>
/// Loading reads each tensor in chunks straight into its parameter (no shard held in memory), a bf16 folder can stay
/// in bf16, and a low-precision weight is cast block by block when nothing records: all exact.
/// </summary>
public sealed class LowPrecisionLoadingTests
{
    [Fact]
    public void Chunked_loading_is_exact_in_the_stored_dtype_and_in_fp32()
    {
        var dir = ModelFamiliesTests.WriteFolder("qwen2", seed: 7);
        var saved = HfModelFolder.ChunkElements;
        HfModelFolder.ChunkElements = 1000;   // every tensor crosses chunk boundaries (the embedding: 4,104,192 elements)
        try
        {
            HfModelFolder.StoredDtype(dir).Should().Be(ScalarType.BFloat16);
            using var fp32 = HfModelFolder.Load(dir);
            using var bf16 = HfModelFolder.Load(dir, ScalarType.BFloat16);
            var file = Safetensors.Load(Path.Combine(dir, "model.safetensors"));
            try
            {
                var a = fp32.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
                var b = bf16.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
                a.Keys.Should().BeEquivalentTo(file.Keys);
                foreach (var (name, t) in file)
                {
                    b[name].dtype.Should().Be(ScalarType.BFloat16);
                    b[name].eq(t).all().item<bool>().Should().BeTrue(name);                                   // bit for bit
                    a[name].dtype.Should().Be(ScalarType.Float32);
                    a[name].eq(t.to(ScalarType.Float32)).all().item<bool>().Should().BeTrue(name);            // bf16 → fp32 is exact
                }
            }
            finally { foreach (var t in file.Values) t.Dispose(); }

            // same logits: every layer computes in fp32 from the same values
            using var ids = torch.tensor(new long[] { 9906, 11, 856, 5679, 374, 19369, 13 }).unsqueeze(0);
            using var la = fp32.Logits(ids);
            using var lb = bf16.Logits(ids);
            (la - lb).abs().max().item<float>().Should().BeLessThan(1e-5f);
        }
        finally
        {
            HfModelFolder.ChunkElements = saved;
            Directory.Delete(Path.GetDirectoryName(dir)!, true);
        }
    }

    [Fact]
    public void A_bf16_weight_cast_block_by_block_gives_the_product_of_the_whole_cast()
    {
        var g = new Generator(3);
        using var scope = torch.NewDisposeScope();   // temporaries stay referenced until the test ends (no finalizer mid-op)
        using var w = (torch.randn(1000, 24, generator: g) * 0.1).to(ScalarType.BFloat16);
        using var b = torch.randn(1000, generator: g).to(ScalarType.BFloat16);
        using var x = torch.randn(2, 5, 24, generator: g);
        using var whole = nn.functional.linear(x, w.to(ScalarType.Float32), b.to(ScalarType.Float32));
        using (torch.no_grad())
        {
            using var blocks = UpcastLinear.Forward(x, w, b, blockWeights: 24 * 96);   // 11 blocks of ≤ 96 rows
            blocks.shape.Should().Equal(2, 5, 1000);
            (blocks - whole).abs().max().item<float>().Should().BeLessThan(1e-6f);
        }
        // while autograd records, the plain cast is used and gradients flow to x
        using var xr = x.detach().requires_grad_(true);
        using var y = UpcastLinear.Forward(xr, w, b, blockWeights: 24 * 96);
        y.sum().backward();
        xr.grad!.shape.Should().Equal(2, 5, 24);
    }
}
