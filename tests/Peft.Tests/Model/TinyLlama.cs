using Peft.Abstractions.Model;
using Peft.Host.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Model;

/// <summary>Small random Llama configurations for fast model tests.</summary>
internal static class TinyLlama
{
    public static LlamaConfig Config(bool tied = true, int layers = 2) => new()
    {
        HiddenSize = 32,
        IntermediateSize = 48,
        NumHiddenLayers = layers,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 2,
        VocabSize = 50,
        MaxPositionEmbeddings = 64,
        RmsNormEps = 1e-5,
        TieWordEmbeddings = tied,
    };

    public static LlamaForCausalLM Create(bool tied = true, int layers = 2, long seed = 1)
    {
        torch.manual_seed(seed);
        var model = new LlamaForCausalLM(Config(tied, layers));
        model.eval();
        return model;
    }

    public static Tensor RandomIds(int batch, int length, long seed = 7)
    {
        var g = new Generator((ulong)seed);
        return torch.randint(0, 50, new long[] { batch, length }, generator: g, dtype: ScalarType.Int64);
    }
}

/// <summary>
/// A LoRA-shaped wrapper for slot tests: y = base(x) + B(A(x)), parameters named like HF PEFT's
/// (base_layer.weight, lora_A.weight (r, in), lora_B.weight (out, r)).
/// </summary>
internal sealed class TestLoraWrapper : nn.Module<Tensor, Tensor>, IAdapterLayer
{
#pragma warning disable IDE1006
    readonly nn.Module<Tensor, Tensor> base_layer;
    readonly Linear lora_A;
    readonly Linear lora_B;
#pragma warning restore IDE1006

    public TestLoraWrapper(ILinearLayer baseLayer, int rank) : base(nameof(TestLoraWrapper))
    {
        BaseLayer = baseLayer;
        base_layer = baseLayer.Module;
        lora_A = nn.Linear(baseLayer.InFeatures, rank, hasBias: false);
        lora_B = nn.Linear(rank, baseLayer.OutFeatures, hasBias: false);
        using (torch.no_grad()) lora_B.weight!.zero_();
        RegisterComponents();
    }

    public ILinearLayer BaseLayer { get; }
    public Parameter A => lora_A.weight!;
    public Parameter B => lora_B.weight!;
    public long InFeatures => BaseLayer.InFeatures;
    public long OutFeatures => BaseLayer.OutFeatures;
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => BaseLayer.Bias;
    public bool CanSetWeight => false;
    public void SetDenseWeight(Tensor weight) => throw new NotSupportedException();

    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = torch.no_grad();
        using var w = BaseLayer.DenseWeight(ScalarType.Float32);
        return (w + lora_B.weight!.matmul(lora_A.weight!)).to(dtype);
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return (base_layer.call(x) + lora_B.call(lora_A.call(x))).MoveToOuterDisposeScope();
    }
}
