namespace Peft.Abstractions;

/// <summary>A configuration key or value is wrong. The message names the key (full path) and the value.</summary>
public sealed class PeftConfigurationException : Exception
{
    public PeftConfigurationException(string key, string? value, string problem)
        : base(value is null ? $"configuration key '{key}': {problem}" : $"configuration key '{key}' has value '{value}': {problem}")
    {
        Key = key;
        Value = value;
    }

    public string Key { get; }
    public string? Value { get; }
}
