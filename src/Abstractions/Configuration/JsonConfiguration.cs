using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;

namespace Peft.Abstractions.Configuration;

/// <summary>
/// A JSON object (such as a PEFT <c>adapter_config.json</c>) seen as an <see cref="IConfiguration"/>, so that one
/// options class is bound by one parser, <see cref="OptionsBinding"/>, whether its values come from the host's
/// configuration or from a file. Keys and nesting are kept (arrays become children "0", "1", ...); a JSON
/// <c>null</c>, an empty array and an empty object are absent keys; numbers keep their JSON text ("0.05", "16"),
/// booleans read "true"/"false".
/// </summary>
public static class JsonConfiguration
{
    public static IConfigurationRoot FromJsonObject(JsonObject json)
    {
        var values = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var (key, node) in json) Flatten(key, node, values);
        return new ConfigurationBuilder().AddInMemoryCollection(values).Build();
    }

    static void Flatten(string path, JsonNode? node, Dictionary<string, string?> values)
    {
        switch (node)
        {
            case null:
                return;
            case JsonObject o:
                foreach (var (key, child) in o) Flatten(path + ConfigurationPath.KeyDelimiter + key, child, values);
                return;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++) Flatten(path + ConfigurationPath.KeyDelimiter + i.ToString(CultureInfo.InvariantCulture), a[i], values);
                return;
            case JsonValue v:
                values[path] = v.GetValueKind() switch
                {
                    JsonValueKind.String => v.GetValue<string>(),
                    JsonValueKind.True => "true",
                    JsonValueKind.False => "false",
                    _ => v.ToJsonString(),
                };
                return;
        }
    }
}
