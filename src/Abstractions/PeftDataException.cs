namespace Peft.Abstractions;

/// <summary>
/// Data a component was given cannot be used: a tensor with NaN/Inf values, a stored quantization state that does not
/// match its weight... The message names the offending thing (layer, tensor or file) in one line.
/// </summary>
public sealed class PeftDataException(string message) : Exception(message);
