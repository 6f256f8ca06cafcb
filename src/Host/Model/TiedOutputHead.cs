using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// The output head when <c>tie_word_embeddings</c> is true: logits = h E^T with E the (vocab, hidden) token
/// embedding. It owns no parameter (HF's checkpoints then carry no <c>lm_head.weight</c>, and
/// <c>named_parameters</c> lists E once, as <c>model.embed_tokens.weight</c>); it reads E from the embedding at
/// each call, so moving the model keeps the tie. Setting its weight writes the embedding, as in HF.
/// </summary>
public sealed class TiedOutputHead : nn.Module<Tensor, Tensor>, ILinearLayer, IDenseLinear
{
    // A delegate, not a Module field: a Module-typed field would be registered as a child.
    readonly Func<Parameter> _embedding;

    public TiedOutputHead(Func<Parameter> embeddingWeight, long hiddenSize, long vocabSize) : base(nameof(TiedOutputHead))
    {
        _embedding = embeddingWeight;
        InFeatures = hiddenSize;
        OutFeatures = vocabSize;
        RegisterComponents();
    }

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => null;

    /// <summary>h (..., hidden) -> h E^T (..., vocab) in h's dtype.</summary>
    public override Tensor forward(Tensor h)
    {
        // A bf16 embedding is cast block by block (no fp32 copy of the vocab × hidden table) when nothing records.
        return UpcastLinear.Forward(h, _embedding(), null);
    }

    Tensor IDenseLinear.ComputeWeight(ScalarType dtype)
    {
        var e = _embedding();
        return e.dtype == dtype ? e : e.to(dtype);
    }

    /// <summary>The embedding itself: tying never makes a second vocab × hidden tensor.</summary>
    Tensor IDenseLinear.StoredWeight => _embedding();

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = torch.no_grad();
        // the intermediate stays in a scope, not only on the stack, so no GC can finalize it while clone reads it
        using var scope = torch.NewDisposeScope();
        return _embedding().detach().to(dtype).clone().MoveToOuterDisposeScope();
    }

    public bool CanSetWeight => true;

    public void SetDenseWeight(Tensor weight)
    {
        if (!weight.shape.SequenceEqual(new[] { OutFeatures, InFeatures }))
            throw new ArgumentException($"SetDenseWeight: expected shape [{OutFeatures}, {InFeatures}], got [{string.Join(", ", weight.shape)}]");
        using var _ = torch.no_grad();
        _embedding().copy_(weight);
    }
}
