using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.QLora;

/// <summary>
/// The device seam of the QLoRA plugin: packing a weight into the 4-bit blockwise format and dequantizing it back.
/// Everything device-specific sits behind this interface; <see cref="CpuFourBitKernels"/> is the CPU implementation,
/// and a CUDA one (bitsandbytes' kQuantizeBlockwise / kDequantizeBlockwise) would be a class beside it, chosen in
/// <see cref="FourBitKernels.For"/>.
/// </summary>
public interface IFourBitKernels
{
    /// <summary>
    /// Quantize a finite (out, in) weight (any float dtype; read as fp32) in blocks of <paramref name="blockSize"/>,
    /// with or without double quantization of the absmax values. The result owns new tensors (no storage shared with
    /// <paramref name="weight"/>).
    /// </summary>
    FourBitWeights Quantize(Tensor weight, FourBitType type, int blockSize, bool doubleQuant);

    /// <summary>
    /// Write deq(W) = code[q] · absmax, row-major, into the first out·in elements of <paramref name="destination"/>
    /// (a contiguous fp32 tensor on the kernel's device, not part of any autograd graph).
    /// </summary>
    void Dequantize(FourBitWeights weights, Tensor destination);

    /// <summary>
    /// A reusable contiguous fp32 buffer of at least <paramref name="count"/> elements for one dequantized weight, shared
    /// by every layer on this thread (the returned view is valid until the next call). Not owned by the caller beyond
    /// the view handle.
    /// </summary>
    Tensor Scratch(long count);
}

/// <summary>Chooses the kernels for a device.</summary>
public static class FourBitKernels
{
    public static IFourBitKernels For(Device device) => device.type switch
    {
        DeviceType.CPU => CpuFourBitKernels.Instance,
        _ => throw new NotSupportedException(
            $"the QLoRA plugin has no 4-bit kernels for device '{device}' in this build (CPU only; a CUDA implementation of IFourBitKernels drops in here)"),
    };
}
