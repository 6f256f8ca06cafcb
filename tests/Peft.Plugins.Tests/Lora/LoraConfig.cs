using System.Text;
using Microsoft.Extensions.Configuration;

namespace Peft.Plugins.Tests.Lora;

/// <summary>Builds a "Method" configuration section from JSON, as the host reads it from a config file.</summary>
internal static class LoraConfig
{
    public static IConfigurationSection Section(string methodJson)
    {
        var json = $$"""{ "Method": {{methodJson}} }""";
        return new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build().GetSection("Method");
    }
}
