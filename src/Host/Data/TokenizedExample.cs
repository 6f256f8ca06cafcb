namespace Peft.Host.Data;

/// <summary>
/// One training sequence: token ids and their labels, the same length. <c>Labels[i]</c> is the label of
/// position i (HF convention, not yet shifted): the loss compares the prediction at position i−1 with
/// <c>Labels[i]</c>; <see cref="IgnoreIndex"/> (−100) excludes a position from the loss.
/// </summary>
public sealed record TokenizedExample(int[] InputIds, int[] Labels)
{
    public const int IgnoreIndex = -100;

    public int Length => InputIds.Length;

    /// <summary>Tokens that count in the loss after the shift (labels at positions 1..T−1 that are not ignored).</summary>
    public int CountedTokens
    {
        get
        {
            int n = 0;
            for (int i = 1; i < Labels.Length; i++) if (Labels[i] != IgnoreIndex) n++;
            return n;
        }
    }
}
