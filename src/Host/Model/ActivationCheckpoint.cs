using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// Activation checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost") for one
/// block y = f(x; θ): the forward pass runs f without recording a graph and keeps only x; the backward pass
/// recomputes f(x) with a graph and back-propagates the incoming gradient ∂L/∂y through it:
/// <code>
///   forward :  y = f(x)                          (no_grad; saves x)
///   backward:  y' = f(x.detach()) with grad;   (∂L/∂x, ∂L/∂θ) = autograd.grad(y', (x, θ), ∂L/∂y)
/// </code>
/// Built on TorchSharp's custom autograd functions (<c>torch.autograd.SingleTensorFunction</c>, the port of
/// <c>torch.autograd.Function</c>), like PyTorch's <c>torch.utils.checkpoint</c>. Differences from it: the
/// block's trainable parameters are inputs of the function (so they receive gradients even when x does not
/// require grad, e.g. a frozen embedding below the first layer, with no need for HF's
/// <c>enable_input_require_grads</c>), and the RNG state is not replayed, so f must be deterministic
/// (Llama layers have no dropout in training here).
/// </summary>
public static class ActivationCheckpoint
{
    /// <summary>
    /// y = <paramref name="block"/>(<paramref name="input"/>) with recomputation in backward. Pass every parameter
    /// the block uses (<c>layer.parameters()</c>); those not requiring grad are ignored. Without grad mode or
    /// with nothing requiring grad, it simply calls the block. Tensors the block captures must still be alive when
    /// backward runs; pass tensors made during the forward pass (RoPE cos/sin, masks) through the other overload.
    /// </summary>
    public static Tensor Run(Func<Tensor, Tensor> block, Tensor input, IEnumerable<Parameter> parameters) =>
        Run((x, _) => block(x), input, [], parameters);

    /// <summary>
    /// As <see cref="Run(Func{Tensor, Tensor}, Tensor, IEnumerable{Parameter})"/>, with tensors that are not
    /// differentiated (position embeddings, attention masks): they are saved in the autograd graph, so the
    /// recomputation gets them back even after the forward pass disposed its handles, and the block receives them
    /// as its second argument, in order.
    /// </summary>
    public static Tensor Run(Func<Tensor, IReadOnlyList<Tensor>, Tensor> block, Tensor input, IReadOnlyList<Tensor> constants, IEnumerable<Parameter> parameters)
    {
        var trainable = parameters.Where(p => p.requires_grad).Cast<Tensor>().ToList();
        if (!torch.is_grad_enabled() || (!input.requires_grad && trainable.Count == 0))
            return block(input, constants);
        if (constants.Any(c => c.requires_grad))
            throw new ArgumentException("a constant of a checkpointed block requires grad; it would receive no gradient", nameof(constants));
        var args = new object[2 + trainable.Count];
        args[0] = new BlockArgument(block, constants.ToList(), trainable.Count, input.requires_grad);
        args[1] = input;
        for (int i = 0; i < trainable.Count; i++) args[2 + i] = trainable[i];
        return CheckpointFunction.apply(args);
    }

    /// <summary>What the function needs besides its differentiable inputs (kept in the autograd context, not as a tensor).</summary>
    sealed class BlockArgument(Func<Tensor, IReadOnlyList<Tensor>, Tensor> block, List<Tensor> constants, int parameterCount, bool inputRequiresGrad)
    {
        public Func<Tensor, IReadOnlyList<Tensor>, Tensor> Block { get; } = block;
        public int ParameterCount { get; } = parameterCount;
        public bool InputRequiresGrad { get; } = inputRequiresGrad;

        /// <summary>Only used during forward; backward reads the saved copies.</summary>
        public List<Tensor>? Constants { get; set; } = constants;
        public int ConstantCount { get; } = constants.Count;
    }

    sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
    {
        public override string Name => nameof(ActivationCheckpoint);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var argument = (BlockArgument)vars[0];
            var input = (Tensor)vars[1];
            var parameters = new List<Tensor>(argument.ParameterCount);
            for (int i = 0; i < argument.ParameterCount; i++) parameters.Add((Tensor)vars[2 + i]);
            var constants = argument.Constants!;
            argument.Constants = null;   // the graph keeps the saved variables, not the forward's handles
            ctx.save_for_backward([input, .. constants]);
            ctx.save_data("argument", argument);
            ctx.save_data("parameters", parameters);
            // apply() already runs forward with grad mode off: no graph is recorded inside the block.
            return argument.Block(input, constants);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var argument = (BlockArgument)ctx.get_data("argument");
            var parameters = (List<Tensor>)ctx.get_data("parameters");
            List<Tensor> grads;
            using (var scope = torch.NewDisposeScope())
            {
                var saved = ctx.get_saved_variables();
                var constants = saved.GetRange(1, argument.ConstantCount);
                using var enable = torch.enable_grad();
                var input = saved[0].detach().requires_grad_(argument.InputRequiresGrad);
                var output = argument.Block(input, constants);
                var wrt = new List<Tensor>(parameters.Count + 1);
                if (argument.InputRequiresGrad) wrt.Add(input);
                wrt.AddRange(parameters);
                var computed = torch.autograd.grad([output], wrt, [gradOutput], allow_unused: true);
                // Only the gradients survive the scope; the recomputed graph is freed here, layer by layer.
                grads = computed.Select(g => g is null || g.IsInvalid ? null! : g.MoveToOuterDisposeScope()).ToList();
            }
            // One entry per forward argument: none for the block, then x, then each parameter.
            var result = new List<Tensor> { null! };
            int k = 0;
            result.Add(argument.InputRequiresGrad ? grads[k++] : null!);
            for (int i = 0; i < parameters.Count; i++) result.Add(grads[k++]);
            return result;
        }
    }
}
