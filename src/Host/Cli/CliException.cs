namespace Peft.Host.Cli;

/// <summary>Bad input on the command line or in a file it names. Printed as one line on stderr; exit code 2.</summary>
public sealed class CliException(string message) : Exception(message);
