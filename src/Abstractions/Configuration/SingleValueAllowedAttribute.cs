namespace Peft.Abstractions.Configuration;

/// <summary>
/// Marks a list or map option that also accepts a single value (HF PEFT's <c>target_modules</c> is a list
/// or a regex string). <see cref="OptionsBinding"/> then leaves the single value for the options class to
/// read itself instead of rejecting it.
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class SingleValueAllowedAttribute : Attribute;
