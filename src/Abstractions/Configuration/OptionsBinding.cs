using System.Collections;
using System.Globalization;
using System.Reflection;
using Microsoft.Extensions.Configuration;

namespace Peft.Abstractions.Configuration;

/// <summary>Options that check their own values after binding. Yield (key relative to the section, value, problem).</summary>
public interface IValidatableOptions
{
    IEnumerable<(string Key, object? Value, string Problem)> Validate();
}

/// <summary>
/// Binds a configuration section to an options class for the host and for plugins alike, strictly:
/// a key the class does not have, or a value that does not convert, throws
/// <see cref="PeftConfigurationException"/> naming the full key path and the value. Property names match
/// keys case-insensitively; <see cref="ConfigurationKeyNameAttribute"/> gives snake_case names
/// (<c>[ConfigurationKeyName("lora_alpha")]</c>).
/// </summary>
public static class OptionsBinding
{
    /// <param name="section">The section to bind (its children are the option keys).</param>
    /// <param name="ignoredKeys">Keys that belong to the caller, not to <typeparamref name="T"/> (e.g. "name").</param>
    public static T Bind<T>(IConfiguration section, params string[] ignoredKeys) where T : new()
    {
        var path = section is IConfigurationSection s ? s.Path : "";
        CheckKeys(typeof(T), section, path, ignoredKeys);
        var options = new T();
        try
        {
            section.Bind(options);
        }
        catch (InvalidOperationException e)
        {
            // "Failed to convert configuration value 'abc' at 'method:r' to type 'System.Int32'."
            var key = FindFailingKey(e.Message) ?? path;
            var value = key.Length > 0 ? FindValue(section, path, key) : null;
            throw new PeftConfigurationException(key, value, $"cannot be read as the expected type ({e.InnerException?.Message ?? e.Message})");
        }
        if (options is IValidatableOptions v)
        {
            foreach (var (key, value, problem) in v.Validate())
                throw new PeftConfigurationException(Join(path, key), Format(value), problem);
        }
        return options;
    }

    static void CheckKeys(Type type, IConfiguration section, string path, string[] ignored, bool singleValueAllowed = false)
    {
        if (IsScalar(type)) return;
        if (type.IsArray || (type.IsGenericType && typeof(IEnumerable).IsAssignableFrom(type)))
        {
            // A single value where a list or a map is expected would otherwise be dropped silently by the binder.
            if (!singleValueAllowed && section is IConfigurationSection { Value: { Length: > 0 } } scalar && !scalar.GetChildren().Any())
                throw new PeftConfigurationException(scalar.Path, scalar.Value, "expected a list or an object, not a single value");
            var element = ElementType(type);
            if (element is null) return;
            foreach (var child in section.GetChildren()) CheckKeys(element, child, child.Path, Array.Empty<string>());
            return;
        }
        var props = type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite || !IsScalar(p.PropertyType))
            .ToDictionary(p => p.GetCustomAttribute<ConfigurationKeyNameAttribute>()?.Name ?? p.Name, StringComparer.OrdinalIgnoreCase);
        foreach (var child in section.GetChildren())
        {
            if (ignored.Contains(child.Key, StringComparer.OrdinalIgnoreCase)) continue;
            if (!props.TryGetValue(child.Key, out var prop))
            {
                var known = string.Join(", ", props.Keys.Order(StringComparer.Ordinal));
                throw new PeftConfigurationException(child.Path, child.Value, $"unknown key (known keys here: {known})");
            }
            CheckKeys(prop.PropertyType, child, child.Path, Array.Empty<string>(), prop.GetCustomAttribute<SingleValueAllowedAttribute>() is not null);
        }
    }

    static bool IsScalar(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        return t.IsPrimitive || t.IsEnum || t == typeof(string) || t == typeof(decimal) || t == typeof(object);
    }

    static Type? ElementType(Type t)
    {
        if (t.IsArray) return t.GetElementType();
        var args = t.GetGenericArguments();
        // dictionaries: values are the elements (keys are free-form)
        return args.Length switch { 1 => args[0], 2 => args[1], _ => null };
    }

    static string? FindFailingKey(string message)
    {
        var at = message.IndexOf(" at '", StringComparison.Ordinal);
        if (at < 0) return null;
        var end = message.IndexOf('\'', at + 5);
        return end > at ? message[(at + 5)..end] : null;
    }

    static string? FindValue(IConfiguration section, string path, string key)
    {
        var relative = path.Length > 0 && key.StartsWith(path + ":", StringComparison.OrdinalIgnoreCase) ? key[(path.Length + 1)..] : key;
        return section[relative];
    }

    static string Join(string path, string key) => path.Length == 0 ? key : $"{path}:{key}";

    static string? Format(object? v) => v switch
    {
        null => null,
        string s => s,
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        IEnumerable e => "[" + string.Join(", ", e.Cast<object?>()) + "]",
        _ => v.ToString(),
    };
}
