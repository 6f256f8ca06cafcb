namespace Peft.TestPlugins.NoEntry;

/// <summary>Test assembly laid out like a plugin but with no IPeftPlugin implementation.</summary>
public sealed class NotAPlugin
{
    public string Name => "not-a-plugin";
}
