using Peft.ContractKit;
using Peft.Contract.Tests.Host;

namespace Peft.Contract.Tests;

/// <summary>
/// Every method plugin × every contract model × every <see cref="ContractProperty"/>, each its own test
/// (<c>Method_honours_the_contract(method: lora, model: stories260K, property: MergeMatchesUnmerged)</c>).
/// A new method joins the matrix with ONE line in <see cref="Methods"/>.
/// </summary>
public class MethodContractMatrix
{
    /// <summary>The methods under contract: name, a small configuration, what they declare. One line each.</summary>
    public static readonly IReadOnlyList<MethodCase> Methods =
    [
        new("lora", new Dictionary<string, string?> { ["r"] = "4", ["lora_alpha"] = "8", ["target_modules"] = "all-linear" }),
        new("lora", new Dictionary<string, string?> { ["r"] = "2", ["lora_alpha"] = "4", ["use_rslora"] = "true", ["target_modules:0"] = "q_proj", ["target_modules:1"] = "down_proj" }) { Label = "lora-rslora" },
        new("dora", new Dictionary<string, string?> { ["r"] = "4", ["lora_alpha"] = "8", ["target_modules"] = "all-linear" }),
        new("test-scale", new Dictionary<string, string?> { ["targets"] = "all" }),
    ];

    public static IEnumerable<object[]> Matrix() =>
        from method in Methods
        from model in HostContractHost.ModelNames
        from property in PeftMethodContract.Properties
        where method.Declares(property)   // what a method declares not to apply is left out, not passed
        select new object[] { method.Label, model, property.ToString() };

    [Theory]
    [MemberData(nameof(Matrix))]
    public void Method_honours_the_contract(string method, string model, string property)
    {
        var c = Methods.Single(m => m.Label == method);
        var p = Enum.Parse<ContractProperty>(property);
        PeftMethodContract.Check(p, HostContractHost.For(model), c).Should().BeTrue();
    }
}
