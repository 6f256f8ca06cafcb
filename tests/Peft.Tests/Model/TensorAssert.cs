using static TorchSharp.torch;

namespace Peft.Tests.Model;

internal static class TensorAssert
{
    /// <summary>Same dtype, same shape and the same bytes (bit-identical).</summary>
    public static bool Same(Tensor a, Tensor b)
    {
        if (a.dtype != b.dtype || !a.shape.SequenceEqual(b.shape)) return false;
        using var ca = a.contiguous();
        using var cb = b.contiguous();
        return ca.bytes.SequenceEqual(cb.bytes);
    }
}
