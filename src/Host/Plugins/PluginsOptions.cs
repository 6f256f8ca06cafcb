using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;

namespace Peft.Host.Plugins;

/// <summary>
/// The <c>plugins</c> section: where to look for plugins besides the host's own <c>plugins/</c> folder.
/// <code>
/// "plugins": { "directories": [ "/opt/peft-plugins", "./my-plugin/bin/Release" ] }
/// </code>
/// Each entry is either a plugin folder itself (it holds <c>X.dll</c> next to <c>X.deps.json</c>) or a folder
/// whose sub-folders are plugin folders; relative paths are taken from the current directory.
/// From the command line: <c>--set plugins:directories:0=/opt/peft-plugins</c>;
/// from the environment: <c>PEFT_plugins__directories__0=/opt/peft-plugins</c>.
/// </summary>
public sealed class PluginsOptions : IValidatableOptions
{
    public const string Section = "plugins";

    [ConfigurationKeyName("directories")]
    public List<string> Directories { get; set; } = new();

    public IEnumerable<(string Key, object? Value, string Problem)> Validate()
    {
        for (int i = 0; i < Directories.Count; i++)
            if (string.IsNullOrWhiteSpace(Directories[i]))
                yield return ($"directories:{i}", Directories[i], "must be a folder path, not empty");
    }

    /// <summary>Bind and check the <c>plugins</c> section (absent section: no extra directories).</summary>
    public static PluginsOptions From(IConfiguration root)
    {
        var section = root.GetSection(Section);
        var directories = section.GetSection("directories");
        // The binder would silently ignore a single string where a list is expected.
        if (!string.IsNullOrEmpty(directories.Value)) // "[]" in JSON reads as ""
            throw new Abstractions.PeftConfigurationException(directories.Path, directories.Value,
                "must be a list of folders (JSON array; on the command line --set plugins:directories:0=PATH)");
        return OptionsBinding.Bind<PluginsOptions>(section);
    }
}
