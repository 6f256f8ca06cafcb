using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using static TorchSharp.torch;

namespace Peft.ContractKit;

/// <summary>A base model the contract drives: what plugins see (<see cref="IPeftModel"/>) plus a forward pass.</summary>
public interface IContractModel : IDisposable
{
    IPeftModel Model { get; }

    /// <summary>input ids (batch, seq) int64 → logits (batch, seq, vocab) float32.</summary>
    Tensor Logits(Tensor inputIds);

    /// <summary>Training (true) or evaluation (false) mode.</summary>
    void Train(bool training);
}

/// <summary>
/// What the contract needs from a host: fresh copies of one base model, the method by name as the host's plugin
/// loader provides it, and the host's adapter file format. <c>Host/HostContractHost.cs</c> binds this to the
/// peft host; a third-party author binds it to the SDK's host (or their own).
/// </summary>
public interface IContractHost
{
    /// <summary>The base model's name, for messages (<c>tiny-llama</c>, <c>stories260K</c>).</summary>
    string ModelName { get; }

    /// <summary>A fresh base model; every call returns the same weights.</summary>
    IContractModel CreateModel();

    /// <summary>Input ids (batch, seq) int64 valid for the model's vocabulary; the same every call.</summary>
    Tensor SampleInputIds();

    /// <summary>The method called <paramref name="name"/>, as the host's plugin loader provides it.</summary>
    IPeftMethod Method(string name);

    /// <summary>Write the adapter in the host's adapter folder format into <paramref name="directory"/>.</summary>
    void SaveAdapter(IAdapter adapter, string directory);

    /// <summary>Load the adapter folder onto <paramref name="model"/> (throws for a bad file).</summary>
    IAdapter LoadAdapter(string directory, IPeftModel model);

    /// <summary>Rewrite the adapter folder's tensors; the callback sees and returns them keyed as in <see cref="IAdapter.GetStateDict"/>.</summary>
    void RewriteAdapterTensors(string directory, Func<IReadOnlyDictionary<string, Tensor>, Dictionary<string, Tensor>> change);
}
