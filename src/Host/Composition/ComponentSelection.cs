using Microsoft.Extensions.Configuration;
using Peft.Abstractions;

namespace Peft.Host.Composition;

/// <summary>
/// A plugin-provided component chosen in configuration: a section with a <c>name</c> and the component's own
/// keys (<c>"method": { "name": "lora", "r": 16 }</c>). The component binds the rest of the section itself.
/// </summary>
public sealed record ComponentSelection(string Name, IConfigurationSection Section)
{
    public string NameKey => Section.Path + ":name";

    /// <summary>The selection in <paramref name="sectionName"/>, or null when the section is absent.</summary>
    public static ComponentSelection? From(IConfiguration root, string sectionName)
    {
        var section = root.GetSection(sectionName);
        if (!section.Exists()) return null;
        return FromSection(section);
    }

    public static ComponentSelection FromSection(IConfigurationSection section)
    {
        var name = section["name"];
        if (string.IsNullOrWhiteSpace(name))
            throw new PeftConfigurationException(section.Path + ":name", name, "is required (which plugin component to use; see 'peft plugins')");
        return new ComponentSelection(name.Trim(), section);
    }

    /// <summary>Every entry of a list section (<c>"hooks": [ { "name": "lisa", ... } ]</c>).</summary>
    public static IReadOnlyList<ComponentSelection> ListFrom(IConfiguration root, string sectionName) =>
        root.GetSection(sectionName).GetChildren().Select(FromSection).ToList();
}
