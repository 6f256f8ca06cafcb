using Peft.Abstractions;
using Peft.Host.Cli;
using Peft.Host.Formats;

namespace Peft.Host.Commands;

/// <summary>Dispatches <c>peft VERB [options]</c> to a command and turns bad input into one stderr line and exit code 2.</summary>
public static class CommandLine
{
    /// <summary>Every verb. New commands are added here.</summary>
    public static IReadOnlyList<ICliCommand> Commands { get; } = new List<ICliCommand>
    {
        new ImportLlama2cCommand(),
        new GenerateCommand(),
        new EvalCommand(),
        new PluginsCommand(),
        new TrainCommand(),
        new MergeCommand(),
        new PlanCommand(),
        new RecommendCommand(),
        new QuantizeCommand(),
        new CompareCommand(),
        new AnalyzeCommand(),
    };

    public static int Run(string[] argv, CliContext context)
    {
        if (argv.Length == 0 || argv[0] is "--help" or "-h" or "help")
        {
            context.Out.WriteLine(Usage());
            return argv.Length == 0 ? 2 : 0;
        }
        var verb = argv[0];
        var command = Commands.FirstOrDefault(c => c.Name == verb);
        if (command is null)
        {
            context.Error.WriteLine($"peft: unknown command '{verb}'. Commands: {string.Join(", ", Commands.Select(c => c.Name))}");
            return 2;
        }
        try
        {
            var args = new CommandArgs(verb, argv[1..], new HashSet<string>(command.Flags.Append("--help").Append("-h")));
            if (args.Help)
            {
                context.Out.WriteLine(command.Help);
                return 0;
            }
            return command.Run(args, context);
        }
        catch (Exception e) when (e is CliException or PeftFormatException or PeftConfigurationException or PeftDataException or Plugins.PluginLoadException or Training.TrainingException or Model.NonFiniteValuesException)
        {
            context.Error.WriteLine($"peft {verb}: error: {e.Message}");
            return 2;
        }
    }

    public static string Usage() =>
        "peft: parameter-efficient fine-tuning of Llama-family models (the methods loaded: peft plugins)\n\n" +
        "usage: peft <command> [options]      peft <command> --help\n\ncommands:\n" +
        string.Join("\n", Commands.Select(c => $"  {c.Name,-16} {c.Summary}"));
}
