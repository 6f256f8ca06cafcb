namespace Peft.Host.Cli;

/// <summary>One verb of the <c>peft</c> command. Add a class implementing this and list it in <c>Commands.CommandLine.Commands</c>.</summary>
public interface ICliCommand
{
    /// <summary>The verb: <c>generate</c>.</summary>
    string Name { get; }

    /// <summary>One line for <c>peft --help</c>.</summary>
    string Summary { get; }

    /// <summary>The full <c>peft VERB --help</c> text: usage line, every option, an example.</summary>
    string Help { get; }

    /// <summary>Options that take no value (<c>--json</c>); every other option takes one.</summary>
    IReadOnlySet<string> Flags { get; }

    /// <summary>Run the verb. Throw <see cref="CliException"/> (or a format/configuration exception) for bad input.</summary>
    int Run(CommandArgs args, CliContext context);
}

/// <summary>Where a command writes. Tests pass string writers; the real process passes the console.</summary>
public sealed class CliContext(TextWriter stdout, TextWriter stderr)
{
    public TextWriter Out { get; } = stdout;
    public TextWriter Error { get; } = stderr;

    /// <summary>Folder of the running host (its <c>plugins/</c> folder lives there).</summary>
    public string BaseDirectory { get; init; } = AppContext.BaseDirectory;
}
