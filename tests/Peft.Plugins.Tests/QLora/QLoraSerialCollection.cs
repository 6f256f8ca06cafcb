namespace Peft.Plugins.Tests.QLora;

/// <summary>
/// The QLoRA tests draw from torch's global generator (randn) and build large tensors; they run alone, after the
/// parallel collections, so they neither perturb tests that check the global generator's sequence nor compete for
/// the two cores.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class QLoraSerialCollection
{
    public const string Name = "QLoRA (serial)";
}
