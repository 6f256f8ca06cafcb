using Peft.Host.Cli;
using Peft.Host.Commands;

return CommandLine.Run(args, new CliContext(Console.Out, Console.Error));
