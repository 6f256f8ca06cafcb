using System.Reflection;
using Peft.ContractKit;
using Xunit;

namespace Ia3.Tests;

/// <summary>
/// Every property of the method contract, each its own test, on the IA³ plugin as the host loads it (its build output
/// folder, through the host's plugin loader) and on a tiny seeded Llama, for PEFT's default Llama targets
/// (k_proj, v_proj scaled at the output; down_proj, feed-forward, at the input).
/// </summary>
public class ContractTests
{
    static readonly string PluginDirectory = typeof(ContractTests).Assembly
        .GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "PluginDirectory").Value!;

    /// <summary>The method under contract: its name, a small configuration, and what it declares (starts at the base, merges).</summary>
    static readonly MethodCase Method = new("ia3", new Dictionary<string, string?>(), EqualsBaseAtInit: true, CanMerge: true);

    public static IEnumerable<object[]> Properties() =>
        PeftMethodContract.Properties.Where(Method.Declares).Select(p => new object[] { p.ToString() });

    [Theory]
    [MemberData(nameof(Properties))]
    public void The_method_honours_the_contract(string property) =>
        Assert.True(PeftMethodContract.Check(Enum.Parse<ContractProperty>(property), PeftContractHost.TinyLlama([PluginDirectory]), Method));
}
