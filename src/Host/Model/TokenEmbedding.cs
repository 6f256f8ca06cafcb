using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>Token embedding: ids (B, T) int64 -> rows of <c>weight</c> (vocab, hidden), returned in fp32 (the compute dtype).</summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>, IStorageDtypeLayer
{
#pragma warning disable IDE1006
    Parameter weight;
#pragma warning restore IDE1006

    public TokenEmbedding(long vocabSize, long hiddenSize, ScalarType storageDtype = ScalarType.Float32, Device? device = null)
        : base(nameof(TokenEmbedding))
    {
        weight = new Parameter(torch.zeros(vocabSize, hiddenSize, storageDtype, device));
        RegisterComponents();
    }

    public Parameter Weight => weight;

    void IStorageDtypeLayer.StoreParameterAs(string name, ScalarType dtype)
    {
        if (name != "weight") throw new ArgumentException(ParameterStorage.UnknownParameter(nameof(TokenEmbedding), name), nameof(name));
        var old = weight;
        weight = ParameterStorage.Recast(old, dtype);
        ConditionallyRegisterParameter(name, weight);
        old.Dispose();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var rows = weight.index_select(0, ids.reshape(-1));                 // (B*T, hidden)
        var shape = ids.shape.Append(weight.shape[1]).ToArray();
        return rows.reshape(shape).to(ScalarType.Float32).MoveToOuterDisposeScope(); // (B, T, hidden)
    }
}
