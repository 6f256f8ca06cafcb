namespace Peft.ContractKit;

/// <summary>
/// One method under the contract: its configuration name, a small configuration (the keys of its <c>method</c>
/// section, as strings), and what it declares about itself.
/// </summary>
/// <param name="Method">The <c>method:name</c> of the plugin's <see cref="Abstractions.Methods.IPeftMethod"/>.</param>
/// <param name="Options">Its options, e.g. <c>["r"] = "4"</c>; list entries as <c>["target_modules:0"] = "q_proj"</c>.</param>
/// <param name="EqualsBaseAtInit">The freshly attached adapter leaves the output unchanged (LoRA's B = 0, IA³'s ones).</param>
/// <param name="CanMerge">The adapter can be folded into the base weights (<c>Merge</c>/<c>Unmerge</c>).</param>
public sealed record MethodCase(string Method, IReadOnlyDictionary<string, string?> Options, bool EqualsBaseAtInit = true, bool CanMerge = true)
{
    /// <summary>The case's name in test names (defaults to the method; set it when one method has several cases).</summary>
    public string Label { get; init; } = Method;

    /// <summary>Whether the method declares that <paramref name="property"/> applies to it.</summary>
    public bool Declares(ContractProperty property) => property switch
    {
        ContractProperty.EqualsBaseAtInit => EqualsBaseAtInit,
        ContractProperty.MergeMatchesUnmerged => CanMerge,
        _ => true,
    };

    public override string ToString() => Label;
}
