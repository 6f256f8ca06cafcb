namespace Peft.Host.Plugins;

/// <summary>
/// A plugin could not be loaded, or two plugins collide. The message names every file involved and the reason;
/// <see cref="Paths"/> holds those files (plugin assemblies or folders).
/// </summary>
public sealed class PluginLoadException : Exception
{
    /// <summary>One plugin (assembly or folder) failed.</summary>
    public PluginLoadException(string path, string reason, Exception? inner = null)
        : base($"plugin '{path}': {reason}", inner)
    {
        Paths = new[] { path };
    }

    /// <summary>Several plugins are involved (a name claimed twice); the message names them itself.</summary>
    public PluginLoadException(IReadOnlyList<string> paths, string message)
        : base(message)
    {
        Paths = paths;
    }

    public IReadOnlyList<string> Paths { get; }
}
