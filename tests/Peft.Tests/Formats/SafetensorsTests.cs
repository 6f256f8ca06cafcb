using Peft.Host.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Tests.Formats;

public sealed class SafetensorsTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("peft-st-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Round_trip_keeps_every_dtype_bit_identical()
    {
        using var scope = torch.NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.f32"] = torch.randn(3, 5),
            ["b.bf16"] = torch.randn(4, 2).to(ScalarType.BFloat16),
            ["c.f16"] = torch.randn(7).to(ScalarType.Float16),
            ["d.u8"] = torch.tensor(new byte[] { 0, 1, 255 }),
            ["e.i64"] = torch.tensor(new long[] { -5, 1L << 40 }),
        };
        var path = Path.Combine(_dir, "m.safetensors");
        Safetensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });

        var (_, meta, _) = Safetensors.ReadHeader(path);
        meta["format"].Should().Be("pt");
        var loaded = Safetensors.Load(path);
        loaded.Keys.Should().BeEquivalentTo(tensors.Keys);
        foreach (var (k, t) in tensors)
        {
            loaded[k].dtype.Should().Be(t.dtype);
            loaded[k].shape.Should().Equal(t.shape);
            loaded[k].bytes.ToArray().Should().Equal(t.bytes.ToArray());
        }
    }

    [Fact]
    public void Truncated_file_is_rejected_with_the_file_name()
    {
        using var scope = torch.NewDisposeScope();
        var path = Path.Combine(_dir, "t.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["w"] = torch.randn(16, 16) });
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 10)]);
        var act = () => Safetensors.Load(path);
        act.Should().Throw<PeftFormatException>().WithMessage($"*{path}*'w'*overrun*");
    }
}
