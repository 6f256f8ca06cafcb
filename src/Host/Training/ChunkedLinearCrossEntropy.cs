using Peft.Abstractions.Model;
using Peft.Host.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Training;

/// <summary>
/// The output head and the summed cross entropy computed over chunks of tokens, so the (tokens × vocab) logits,
/// their softmax and their gradient never exist whole (the fused linear cross-entropy of Liger-Kernel; Unsloth's
/// chunked CE). For the N counted rows h (N, D), head W (V, D) and targets y (N), chunk c of C rows:
/// <code>
///   z_c   = h_c W^T                                   (C, V)   the chunk's logits, freed after the chunk
///   L    += Σ_i  logsumexp(z_c[i]) − z_c[i, y_i]               summed loss
///   g_c   = softmax(z_c) − onehot(y_c)                (C, V)   ∂L/∂z_c, in place over z_c
///   ∂L/∂h_c = g_c W                                   (C, D)   written into ∂L/∂h (N, D)
///   ∂L/∂W  += g_c^T h_c                               (V, D)   only when W trains
/// </code>
/// The gradients are computed in the forward pass (one matmul per chunk fewer than recomputing the logits in
/// backward, as Liger does); backward only scales them by the incoming ∂loss/∂L (1/tokens of the step). A head that
/// is not one dense weight (an adapter on lm_head, a quantized head) runs chunk by chunk through
/// <see cref="ActivationCheckpoint"/> instead: same memory bound, one extra head forward per chunk in backward.
/// <para>
/// A frozen head stored in bf16/fp16 (a bf16 folder's 128,256 × d embedding, tied or not) is never cast whole to
/// fp32: each chunk reads W in blocks of rows, cast to fp32 one block at a time (≤ 4M weights, 16 MiB), so the
/// products and the softmax are fp32 exactly as with an fp32 copy of W (the same values: bf16 → fp32 is exact):
/// <code>
///   z_c[:, r0:r1]  = h_c · W[r0:r1].to(fp32)ᵀ            (C, R)   forward logits, block by block
///   ∂L/∂h_c       = Σ_blocks g_c[:, r0:r1] · W[r0:r1].to(fp32)     (C, D)
/// </code>
/// Casting per chunk costs 2·V·D conversions per chunk against the 3·C·V·D multiply-adds of the chunk (a relative
/// cost of about 1/C); holding one fp32 copy per step instead would cost V·D·4 bytes (2 GiB at d = 4096).
/// </para>
/// </summary>
public static class ChunkedLinearCrossEntropy
{
    /// <summary>
    /// Σ CE over the rows of <paramref name="hidden"/> (N, D) fp32 against <paramref name="targets"/> (N) int64
    /// (every row counted: drop ignored rows before), through <paramref name="head"/>, <paramref name="chunkTokens"/>
    /// rows at a time. 0-d float32, differentiable with respect to the hidden states and the head's trainable parameters.
    /// </summary>
    public static Tensor Sum(Tensor hidden, ILinearLayer head, Tensor targets, int chunkTokens)
    {
        if (hidden.dim() != 2 || targets.dim() != 1 || hidden.shape[0] != targets.shape[0])
            throw new ArgumentException($"hidden [{string.Join(", ", hidden.shape)}] and targets [{string.Join(", ", targets.shape)}] must be (N, D) and (N)");
        if (chunkTokens < 1) throw new ArgumentOutOfRangeException(nameof(chunkTokens), $"chunk of {chunkTokens} tokens");
        if (head is IDenseLinear dense && head.Bias is null)
        {
            var stored = dense.StoredWeight;
            // a frozen bf16 head, or any bf16 head when nothing records (eval: parameters keep requires_grad): cast block by block
            if (stored.dtype != hidden.dtype && (!stored.requires_grad || !torch.is_grad_enabled()))
                return Dense(hidden, stored, targets, chunkTokens);
            using var scope = torch.NewDisposeScope();
            var weight = dense.ComputeWeight(hidden.dtype);      // (V, D), the parameter or a differentiable cast
            return Dense(hidden, weight, targets, chunkTokens).MoveToOuterDisposeScope();
        }
        return Checkpointed(hidden, head, targets, chunkTokens);
    }

    /// <summary>The fused path for a dense head W (V, D): see the class comment.</summary>
    public static Tensor Dense(Tensor hidden, Tensor weight, Tensor targets, int chunkTokens)
    {
        bool needHidden = hidden.requires_grad, needWeight = weight.requires_grad;
        if (!torch.is_grad_enabled() || (!needHidden && !needWeight))
        {
            using var noGrad = torch.no_grad();
            return Chunks(hidden, weight, targets, chunkTokens, null, null);
        }
        var argument = new FusedArgument(chunkTokens, needHidden, needWeight);
        var loss = FusedFunction.apply(argument, hidden, weight, targets);
        // The graph now holds the gradients as saved variables (freed with it); drop the forward's handles.
        foreach (var t in argument.Handles) t.Dispose();
        return loss;
    }

    /// <summary>
    /// Loss of every chunk; with <paramref name="gradHidden"/> / <paramref name="gradWeight"/> also ∂L/∂h (written)
    /// and ∂L/∂W (accumulated). Runs without a graph.
    /// </summary>
    static Tensor Chunks(Tensor hidden, Tensor weight, Tensor targets, int chunkTokens, Tensor? gradHidden, Tensor? gradWeight)
    {
        using var outer = torch.NewDisposeScope();
        long n = hidden.shape[0];
        var total = torch.zeros(Array.Empty<long>(), ScalarType.Float32, hidden.device);
        // One (C, V) buffer for every chunk's logits, softmax and ∂L/∂z (the largest tensor of the loss, made once).
        var buffer = torch.empty(new[] { Math.Min(chunkTokens, n), weight.shape[0] }, hidden.dtype, hidden.device);
        for (long start = 0; start < n; start += chunkTokens)
        {
            using var scope = torch.NewDisposeScope();
            long rows = Math.Min(chunkTokens, n - start);
            var h = hidden.narrow(0, start, rows);                           // (C, D)
            var y = targets.narrow(0, start, rows).unsqueeze(1);            // (C, 1)
            var z = Logits(h, weight, buffer.narrow(0, 0, rows));           // (C, V) = h W^T, written over the buffer
            var picked = z.gather(1, y);                                     // (C, 1)  z[i, y_i]
            var max = z.amax(new long[] { 1 }, keepdim: true);               // (C, 1)  m
            var e = z.sub_(max).exp_();                                      // (C, V)  exp(z − m), in place
            var sumExp = e.sum(1, keepdim: true);                            // (C, 1)  s
            total.add_((sumExp.log().add_(max) - picked).sum());             // logsumexp(z) = m + log s
            if (gradHidden is null && gradWeight is null) continue;
            var g = e.div_(sumExp);                                          // softmax(z), in place
            g.scatter_add_(1, y, torch.full(rows, 1, -1f, ScalarType.Float32, g.device));  // − onehot(y)
            if (gradHidden is not null) GradHidden(g, weight, gradHidden.narrow(0, start, rows));
            gradWeight?.addmm_(g.t(), h);
        }
        return total.MoveToOuterDisposeScope();
    }

    /// <summary>Weights per block when a low-precision W is cast to the hidden states' dtype: 4M (16 MiB of fp32).</summary>
    const long DefaultUpcastBlockWeights = 4L << 20;

    /// <summary>Tests shrink the block to exercise several blocks on a tiny head; per thread, so nothing beside them changes.</summary>
    [ThreadStatic] internal static long TestUpcastBlockWeights;

    static long UpcastBlockWeights => TestUpcastBlockWeights > 0 ? TestUpcastBlockWeights : DefaultUpcastBlockWeights;

    /// <summary>z = h Wᵀ (C, V) in h's dtype, written into <paramref name="z"/>; a W stored in another dtype is cast block of rows by block of rows.</summary>
    static Tensor Logits(Tensor h, Tensor weight, Tensor z)
    {
        if (weight.dtype == h.dtype) return z.addmm_(h, weight.t(), beta: 0);
        // block rows: the cast block (R, D) and its part of z (C, R) each at most 4M values
        long v = weight.shape[0], rows = Math.Max(1, UpcastBlockWeights / Math.Max(weight.shape[1], h.shape[0]));
        for (long r0 = 0; r0 < v; r0 += rows)
        {
            long n = Math.Min(rows, v - r0);
            // every temporary disposed here, not at the chunk's end: a view such as block.t() left to the scope
            // would keep each block's storage alive, all V rows of them by the last block
            using var rowsView = weight.narrow(0, r0, n);
            using var block = rowsView.to(h.dtype);
            using var zBlock = z.narrow(1, r0, n);                       // (C, R), a strided view of z
            using var blockT = block.t();
            zBlock.addmm_(h, blockT, beta: 0);                           // written in place: no (C, R) product to copy
        }
        return z;
    }

    /// <summary>∂L/∂h = g W (C, D) into <paramref name="into"/>; a W stored in another dtype is cast block by block (Σ over row blocks).</summary>
    static void GradHidden(Tensor g, Tensor weight, Tensor into)
    {
        if (weight.dtype == g.dtype) { into.addmm_(g, weight, beta: 0); return; }
        long v = weight.shape[0], rows = Math.Max(1, UpcastBlockWeights / weight.shape[1]);
        into.zero_();
        for (long r0 = 0; r0 < v; r0 += rows)
        {
            long n = Math.Min(rows, v - r0);
            using var rowsView = weight.narrow(0, r0, n);
            using var block = rowsView.to(g.dtype);
            using var gBlock = g.narrow(1, r0, n);
            into.addmm_(gBlock, block);
        }
    }

    sealed record FusedArgument(int ChunkTokens, bool NeedHidden, bool NeedWeight)
    {
        /// <summary>The gradients made in forward: alive until apply() has saved them into the graph.</summary>
        public List<Tensor> Handles { get; } = new();
    }

    sealed class FusedFunction : autograd.SingleTensorFunction<FusedFunction>
    {
        public override string Name => nameof(ChunkedLinearCrossEntropy);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var a = (FusedArgument)vars[0];
            var hidden = (Tensor)vars[1];
            var weight = (Tensor)vars[2];
            var targets = (Tensor)vars[3];
            using var scope = torch.NewDisposeScope();
            var gradHidden = a.NeedHidden ? torch.empty_like(hidden) : null;
            var gradWeight = a.NeedWeight ? torch.zeros_like(weight) : null;
            var loss = Chunks(hidden, weight, targets, a.ChunkTokens, gradHidden, gradWeight);
            // Saved into the graph after forward returns: their handles must outlive this scope (Dense disposes them).
            if (gradHidden is not null) a.Handles.Add(gradHidden.DetachFromDisposeScope());
            if (gradWeight is not null) a.Handles.Add(gradWeight.DetachFromDisposeScope());
            ctx.save_for_backward(a.Handles.ToList());
            ctx.save_data("argument", a);
            return loss.MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var a = (FusedArgument)ctx.get_data("argument");
            using var scope = torch.NewDisposeScope();
            var saved = ctx.get_saved_variables();
            int k = 0;
            var gradHidden = a.NeedHidden ? saved[k++].mul(gradOutput).MoveToOuterDisposeScope() : null;
            var gradWeight = a.NeedWeight ? saved[k++].mul(gradOutput).MoveToOuterDisposeScope() : null;
            return [null!, gradHidden!, gradWeight!, null!];
        }
    }

    /// <summary>Any head: each chunk's CE through activation checkpointing (its logits are recomputed in backward).</summary>
    static Tensor Checkpointed(Tensor hidden, ILinearLayer head, Tensor targets, int chunkTokens)
    {
        using var scope = torch.NewDisposeScope();
        var parameters = head.Module.parameters().ToList();
        long n = hidden.shape[0];
        Tensor? total = null;
        for (long start = 0; start < n; start += chunkTokens)
        {
            long rows = Math.Min(chunkTokens, n - start);
            var part = ActivationCheckpoint.Run(
                (h, c) => nn.functional.cross_entropy(head.Module.call(h).to(ScalarType.Float32), c[0], reduction: nn.Reduction.Sum),
                hidden.narrow(0, start, rows), [targets.narrow(0, start, rows)], parameters);
            total = total is null ? part : total + part;
        }
        return (total ?? torch.zeros(Array.Empty<long>(), ScalarType.Float32, hidden.device)).MoveToOuterDisposeScope();
    }
}
