using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A tensor or a model output holds NaN or infinity (a broken adapter, an absurd lora_alpha, a damaged weights
/// file). The CLI reports it in one line with exit code 2, naming the tensor where it can.
/// </summary>
public sealed class NonFiniteValuesException(string message) : Exception(message)
{
    /// <summary>The first parameter of <paramref name="parameters"/> holding NaN or infinity, or null.</summary>
    public static string? FirstNonFinite(IEnumerable<(string Name, Tensor Tensor)> parameters)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, t) in parameters)
        {
            if (!t.is_floating_point()) continue;
            using var scope = torch.NewDisposeScope();
            if (!torch.isfinite(t).all().item<bool>()) return name;
        }
        return null;
    }
}
