namespace Peft.Plugins.Tests.Fakes;

/// <summary>
/// Tests that replay torch's global generator (manual_seed, then an init or a dropout draw) run alone, not beside
/// other test classes drawing from the same generator on other threads.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GlobalRngCollection
{
    public const string Name = "global torch RNG";
}
