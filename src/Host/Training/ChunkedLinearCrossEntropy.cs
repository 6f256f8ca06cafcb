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
        var wT = weight.t();                                                 // (D, V), a view
        for (long start = 0; start < n; start += chunkTokens)
        {
            using var scope = torch.NewDisposeScope();
            long rows = Math.Min(chunkTokens, n - start);
            var h = hidden.narrow(0, start, rows);                           // (C, D)
            var y = targets.narrow(0, start, rows).unsqueeze(1);            // (C, 1)
            var z = buffer.narrow(0, 0, rows).addmm_(h, wT, beta: 0);       // (C, V) = h W^T, written over the buffer
            var picked = z.gather(1, y);                                     // (C, 1)  z[i, y_i]
            var max = z.amax(new long[] { 1 }, keepdim: true);               // (C, 1)  m
            var e = z.sub_(max).exp_();                                      // (C, V)  exp(z − m), in place
            var sumExp = e.sum(1, keepdim: true);                            // (C, 1)  s
            total.add_((sumExp.log().add_(max) - picked).sum());             // logsumexp(z) = m + log s
            if (gradHidden is null && gradWeight is null) continue;
            var g = e.div_(sumExp);                                          // softmax(z), in place
            g.scatter_add_(1, y, torch.full(rows, 1, -1f, ScalarType.Float32, g.device));  // − onehot(y)
            if (gradHidden is not null) gradHidden.narrow(0, start, rows).addmm_(g, weight, beta: 0);
            gradWeight?.addmm_(g.t(), h);
        }
        return total.MoveToOuterDisposeScope();
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
