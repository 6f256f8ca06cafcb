using Peft.Abstractions.Model;

namespace Peft.Host.Model;

/// <summary>A module that owns named linear-layer slots (<c>q_proj</c>...) which <see cref="IPeftModel.SetLinear"/> can replace.</summary>
internal interface ILinearSlotOwner
{
    ILinearLayer GetSlot(string slot);
    void SetSlot(string slot, ILinearLayer layer);
}

internal static class LinearSlotChecks
{
    public static void CheckReplacement(string slot, ILinearLayer current, ILinearLayer replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        if (replacement.InFeatures != current.InFeatures || replacement.OutFeatures != current.OutFeatures)
            throw new ArgumentException(
                $"linear slot '{slot}' is ({current.OutFeatures} out, {current.InFeatures} in); the new layer is ({replacement.OutFeatures} out, {replacement.InFeatures} in)");
    }
}
