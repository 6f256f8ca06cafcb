using Peft.ContractKit;
using Peft.Host.Plugins;

namespace Peft.Contract.Tests.Host;

/// <summary>
/// The contract kit (<see cref="PeftContractHost"/>, the Peft.ContractKit package) bound to this repository: the
/// bundled plugins (plugins/) and the test methods (testplugins/Methods), on the two contract models.
/// </summary>
public static class HostContractHost
{
    public const string TinyLlama = PeftContractHost.TinyLlamaName;
    public const string Stories260K = PeftContractHost.Stories260KName;

    public static IReadOnlyList<string> ModelNames { get; } = [TinyLlama, Stories260K];

    static readonly string[] PluginDirectories =
        [Path.Combine(AppContext.BaseDirectory, "plugins"), Path.Combine(AppContext.BaseDirectory, "testplugins", "Methods")];

    /// <summary>The host for a base model (built once per process).</summary>
    public static PeftContractHost For(string modelName) => modelName switch
    {
        TinyLlama => PeftContractHost.TinyLlama(PluginDirectories),
        Stories260K => PeftContractHost.Stories260K(Peft.Testing.TestData.Repo("stories260K"), PluginDirectories),
        _ => throw new ArgumentException($"unknown contract model '{modelName}' (known: {string.Join(", ", ModelNames)})"),
    };

    /// <summary>The loaded plugins (bundled and test plugins), shared by every test.</summary>
    public static PluginCatalog Plugins => PeftContractHost.CatalogFor(PluginDirectories);
}
