namespace Peft.ContractKit;

/// <summary>The properties every <see cref="Abstractions.Methods.IPeftMethod"/> must have (see <see cref="PeftMethodContract"/>).</summary>
public enum ContractProperty
{
    /// <summary>Attaching a fresh adapter leaves the logits unchanged (max |Δ| ≤ 1e-6), when the method declares it.</summary>
    EqualsBaseAtInit,
    /// <summary>After backward, only the adapter's trainable parameters hold gradients, each of them one, and each is a parameter of the model.</summary>
    OnlyMethodParametersGetGradients,
    /// <summary>A training step (forward, backward, update) leaves the number of live TorchSharp tensors unchanged.</summary>
    TrainingStepLeaksNoTensor,
    /// <summary>Saving the adapter and loading it onto a fresh base gives bit-identical tensors and logits.</summary>
    SaveLoadBitIdentical,
    /// <summary>Merged logits equal unmerged ones (1e-5, relative to the logits' scale); unmerge restores the base weights (1e-6).</summary>
    MergeMatchesUnmerged,
    /// <summary>With the adapter disabled the model computes the base logits (1e-6); enabled again, the adapted ones.</summary>
    DisabledGivesBase,
    /// <summary>Two adapters on one model share no parameter, changing one leaves the other's tensors alone, and each alone computes what it computes on its own.</summary>
    TwoAdaptersIndependent,
    /// <summary>An adapter file (or state dict) with an unknown, a missing or a wrongly shaped tensor is refused with a message naming that key.</summary>
    BadAdapterFileRefused,
}

/// <summary>A method broke a property of the contract. The message starts with the property and the method.</summary>
public sealed class ContractViolation(ContractProperty property, string method, string detail, Exception? inner = null)
    : Exception($"contract property {property} broken by method '{method}': {detail}", inner)
{
    public ContractProperty Property { get; } = property;
    public string Method { get; } = method;
    public string Detail { get; } = detail;
}
