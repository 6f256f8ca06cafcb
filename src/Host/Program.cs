using Peft.Host.Cli;

return CommandLine.Run(args, new CliContext(Console.Out, Console.Error));
