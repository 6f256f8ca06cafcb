using System.Reflection;
using Peft.ContractKit;
using Xunit;

namespace MyMethod.Tests;

/// <summary>
/// Every property of the method contract, each its own test, on the plugin as the host loads it (its build output
/// folder, through the host's plugin loader) and on a tiny seeded Llama. A broken property fails with a message
/// naming it: "contract property MergeMatchesUnmerged broken by method 'mymethod': ...".
/// </summary>
public class ContractTests
{
    static readonly string PluginDirectory = typeof(ContractTests).Assembly
        .GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "PluginDirectory").Value!;

    /// <summary>The method under contract: its name, a small configuration, and what it declares (starts at the base, merges).</summary>
    static readonly MethodCase Method = new("mymethod",
        new Dictionary<string, string?> { ["target_modules:0"] = "q_proj", ["target_modules:1"] = "v_proj" },
        EqualsBaseAtInit: true, CanMerge: true);

    public static IEnumerable<object[]> Properties() =>
        PeftMethodContract.Properties.Where(Method.Declares).Select(p => new object[] { p.ToString() });

    [Theory]
    [MemberData(nameof(Properties))]
    public void The_method_honours_the_contract(string property) =>
        Assert.True(PeftMethodContract.Check(Enum.Parse<ContractProperty>(property), PeftContractHost.TinyLlama([PluginDirectory]), Method));
}
