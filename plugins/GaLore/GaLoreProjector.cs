using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Plugins.GaLore;

/// <summary>
/// The projector of one (m, n) weight (official <c>GaLoreProjector</c>). Every <c>update_proj_gap</c> steps
/// (first at step 0) it takes the SVD of the CURRENT gradient G = U S Vh and keeps r = min(rank, m, n) singular
/// vectors on its side(s):
/// <code>
///   side Right:  P = Vh[:r]  (r, n)    project  R = G Pᵀ        (m, r)    back  α · R P       (m, n)
///   side Left:   P = U[:, :r] (m, r)   project  R = Pᵀ G        (r, n)    back  α · P R       (m, n)
///   Full:        P = U[:, :r], Q = Vh[:r]      R = Pᵀ G Qᵀ      (r, r)    back  α · P R Q     (m, n)
/// </code>
/// std puts the projector on the smaller side (m ≥ n → Right), reverse_std on the larger one. The moments of
/// Adam live in R's shape, so a std projector keeps r·max(m, n) floats per moment.
/// </summary>
public sealed class GaLoreProjector : IDisposable
{
    public enum Side { Left, Right, Both }

    readonly IGaLoreCompute _compute;

    public GaLoreProjector(GaLoreProjectionType type, long rows, long columns, int rank, int updateProjGap, double scale, IGaLoreCompute compute)
    {
        if (rows < 1 || columns < 1) throw new ArgumentOutOfRangeException(nameof(rows), $"a GaLore weight needs positive sizes, got ({rows}, {columns})");
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(updateProjGap, 1);
        Type = type;
        Rows = rows;
        Columns = columns;
        Rank = (int)Math.Min(rank, Math.Min(rows, columns));
        UpdateProjGap = updateProjGap;
        Scale = scale;
        ProjectorSide = SideOf(type, rows, columns);
        _compute = compute;
    }

    public GaLoreProjectionType Type { get; }
    public long Rows { get; }
    public long Columns { get; }

    /// <summary>The effective rank r = min(rank, m, n).</summary>
    public int Rank { get; }
    public int UpdateProjGap { get; }
    public double Scale { get; }
    public Side ProjectorSide { get; }

    /// <summary>U[:, :r] (m, r) when the projector has a left side, else null. Owned by the projector.</summary>
    public Tensor? Left { get; private set; }

    /// <summary>Vh[:r] (r, n) when the projector has a right side, else null. Owned by the projector.</summary>
    public Tensor? Right { get; private set; }

    public bool HasBasis => (ProjectorSide == Side.Right || Left is not null) && (ProjectorSide == Side.Left || Right is not null);

    /// <summary>Which side(s) the projector of <paramref name="type"/> takes for an (m, n) weight.</summary>
    public static Side SideOf(GaLoreProjectionType type, long rows, long columns) => type switch
    {
        GaLoreProjectionType.Std => rows >= columns ? Side.Right : Side.Left,
        GaLoreProjectionType.ReverseStd => rows >= columns ? Side.Left : Side.Right,
        GaLoreProjectionType.Right => Side.Right,
        GaLoreProjectionType.Left => Side.Left,
        GaLoreProjectionType.Full => Side.Both,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>Shape of the projected gradient (and of Adam's moments): (m, r), (r, n) or (r, r).</summary>
    public long[] ProjectedShape => ProjectorSide switch
    {
        Side.Right => [Rows, Rank],
        Side.Left => [Rank, Columns],
        _ => [Rank, Rank],
    };

    /// <summary>Floats the projector holds: m·r, r·n, or both for <c>full</c>.</summary>
    public long ProjectorElements => ProjectorSide switch
    {
        Side.Right => Rank * Columns,
        Side.Left => Rows * Rank,
        _ => Rows * Rank + Rank * Columns,
    };

    /// <summary>
    /// R, the projection of G (m, n) at optimizer step <paramref name="step"/> (0-based count of the weight's
    /// completed steps): the projector is first recomputed from G's SVD when it has none or step % gap == 0.
    /// Returns a NEW float32 tensor of <see cref="ProjectedShape"/>.
    /// </summary>
    public Tensor Project(Tensor gradient, long step)
    {
        if (gradient.ndim != 2 || gradient.shape[0] != Rows || gradient.shape[1] != Columns)
            throw new ArgumentException($"GaLore projector for ({Rows}, {Columns}) got a gradient of shape [{string.Join(", ", gradient.shape)}]");
        using var scope = torch.NewDisposeScope();
        var g = gradient.dtype == ScalarType.Float32 ? gradient : gradient.to_type(ScalarType.Float32);
        if (!HasBasis || step % UpdateProjGap == 0) Refresh(g);
        var projected = ProjectorSide switch
        {
            Side.Right => g.matmul(Right!.t()),                    // (m, n)(n, r) → (m, r)
            Side.Left => Left!.t().matmul(g),                      // (r, m)(m, n) → (r, n)
            _ => Left!.t().matmul(g).matmul(Right!.t()),           // (r, m)(m, n)(n, r) → (r, r)
        };
        return projected.MoveToOuterDisposeScope();
    }

    /// <summary>α · (the projection's map back to (m, n)) of a tensor of <see cref="ProjectedShape"/>. A NEW tensor.</summary>
    public Tensor ProjectBack(Tensor lowRank)
    {
        if (!HasBasis) throw new InvalidOperationException("the GaLore projector has no basis yet (project a gradient first)");
        using var scope = torch.NewDisposeScope();
        var full = ProjectorSide switch
        {
            Side.Right => lowRank.matmul(Right!),                   // (m, r)(r, n)
            Side.Left => Left!.matmul(lowRank),                     // (m, r)(r, n)
            _ => Left!.matmul(lowRank).matmul(Right!),              // (m, r)(r, r)(r, n)
        };
        return full.mul_(Scale).MoveToOuterDisposeScope();
    }

    /// <summary>Recompute the basis from the SVD of <paramref name="gradient"/> (m, n).</summary>
    public void Refresh(Tensor gradient)
    {
        var (u, vh) = _compute.TopSingularVectors(gradient, Rank);
        if (ProjectorSide != Side.Right) { Left?.Dispose(); Left = u.DetachFromDisposeScope(); } else u.Dispose();
        if (ProjectorSide != Side.Left) { Right?.Dispose(); Right = vh.DetachFromDisposeScope(); } else vh.Dispose();
    }

    /// <summary>Load a stored basis (checkpoint resume); the values are copied.</summary>
    public void LoadBasis(Tensor? left, Tensor? right)
    {
        using var _ = torch.no_grad();
        if (ProjectorSide != Side.Right)
        {
            CheckShape("left", left, [Rows, Rank]);
            Left?.Dispose();
            Left = left!.detach().to(ScalarType.Float32, copy: true).DetachFromDisposeScope();
        }
        if (ProjectorSide != Side.Left)
        {
            CheckShape("right", right, [Rank, Columns]);
            Right?.Dispose();
            Right = right!.detach().to(ScalarType.Float32, copy: true).DetachFromDisposeScope();
        }
    }

    static void CheckShape(string which, Tensor? t, long[] shape)
    {
        if (t is null) throw new ArgumentException($"the {which} projector is missing");
        if (!t.shape.SequenceEqual(shape))
            throw new ArgumentException($"the {which} projector has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]");
    }

    public void Dispose()
    {
        Left?.Dispose(); Left = null;
        Right?.Dispose(); Right = null;
    }
}
