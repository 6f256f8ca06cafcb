using Peft.Abstractions.Model;
using Peft.Host.Model;
using Peft.Host.Tokenization;
using Peft.Host.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Training;

/// <summary>A character-level tokenizer: 0 = unknown, 1 = BOS, 2 = EOS, then one id per character of <see cref="Alphabet"/>.</summary>
public sealed class CharTokenizer : ITextTokenizer
{
    public const string Alphabet = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-#()\n<>{}";
    public int VocabSize => Alphabet.Length + 3;
    public int BosId => 1;
    public int EosId => 2;

    public IReadOnlyList<int> Encode(string text, bool addBos = false, bool addEos = false)
    {
        var ids = new List<int>(text.Length + 2);
        if (addBos) ids.Add(BosId);
        foreach (var c in text)
        {
            int i = Alphabet.IndexOf(c);
            ids.Add(i < 0 ? 0 : i + 3);
        }
        if (addEos) ids.Add(EosId);
        return ids;
    }

    public string Decode(IEnumerable<int> ids) =>
        string.Concat(ids.Where(i => i >= 3 && i < VocabSize).Select(i => Alphabet[i - 3]));
}

/// <summary>y = x Wᵀ (+ b); a weight stored in bfloat16 is upcast per call, as the real base linear does.</summary>
public sealed class FakeLinear : nn.Module<Tensor, Tensor>, ILinearLayer
{
    public Parameter weight;

    public FakeLinear(long inFeatures, long outFeatures, Generator generator) : base(nameof(FakeLinear))
    {
        weight = new Parameter(torch.randn(outFeatures, inFeatures, generator: generator).div_(Math.Sqrt(inFeatures)));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (weight.dtype == ScalarType.Float32) return nn.functional.linear(x, weight);
        using var w = weight.to_type(ScalarType.Float32);
        return nn.functional.linear(x, w);
    }

    public long InFeatures => weight.shape[1];
    public long OutFeatures => weight.shape[0];
    public nn.Module<Tensor, Tensor> Module => this;
    public Tensor? Bias => null;
    public Tensor DenseWeight(ScalarType dtype = ScalarType.Float32) => weight.detach().to_type(dtype, copy: true);
    public bool CanSetWeight => true;

    public void SetDenseWeight(Tensor w)
    {
        using var noGrad = torch.no_grad();
        weight.copy_(w);
    }
}

public sealed class FakeEmbedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight;

    public FakeEmbedding(long vocab, long hidden, Generator generator) : base(nameof(FakeEmbedding))
    {
        weight = new Parameter(torch.randn(vocab, hidden, generator: generator));
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var rows = weight.index_select(0, ids.flatten()).reshape(ids.shape[0], ids.shape[1], weight.shape[1]);
        return rows.to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }
}

/// <summary>h ← h + down(tanh(up(h))) plus a causal mix of the previous position (so the model sees context).</summary>
public sealed class FakeBlock : nn.Module<Tensor, Tensor>
{
    public FakeLinear up_proj;
    public FakeLinear down_proj;

    public FakeBlock(long hidden, long inner, Generator generator) : base(nameof(FakeBlock))
    {
        up_proj = new FakeLinear(hidden, inner, generator);
        down_proj = new FakeLinear(inner, hidden, generator);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = torch.NewDisposeScope();
        var previous = nn.functional.pad(h[.., ..^1, ..], [0, 0, 1, 0]);   // h_{t−1}, zeros at t = 0
        var mixed = h + 0.5 * previous;
        return (h + down_proj.forward(torch.tanh(up_proj.forward(mixed)))).MoveToOuterDisposeScope();
    }
}

public sealed class FakeLmModule : nn.Module<Tensor, Tensor>
{
    public FakeEmbedding embed_tokens;
    public ModuleList<FakeBlock> layers;
    public FakeLinear lm_head;
    public bool Checkpointing;

    public FakeLmModule(int vocab, int hidden, int inner, int numLayers, Generator generator) : base(nameof(FakeLmModule))
    {
        embed_tokens = new FakeEmbedding(vocab, hidden, generator);
        layers = new ModuleList<FakeBlock>(Enumerable.Range(0, numLayers).Select(_ => new FakeBlock(hidden, inner, generator)).ToArray());
        lm_head = new FakeLinear(hidden, vocab, generator);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var h = embed_tokens.forward(ids);
        foreach (var layer in layers)
            h = Checkpointing ? ActivationCheckpoint.Run(layer.forward, h, layer.parameters()) : layer.forward(h);
        return lm_head.forward(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A tiny causal LM for trainer tests: embedding → N blocks (two <see cref="ILinearLayer"/>s each) → lm_head.
/// Parameter names: <c>embed_tokens.weight</c>, <c>layers.{i}.up_proj.weight</c>, <c>layers.{i}.down_proj.weight</c>, <c>lm_head.weight</c>.
/// </summary>
public sealed class TinyCausalLm : ICausalLanguageModel, IBaseWeightsCaster, IActivationCheckpointing
{
    readonly FakeLmModule _module;

    public TinyCausalLm(int vocab, int hidden = 16, int inner = 32, int numLayers = 2, ulong seed = 7, int maxPositions = 1024)
    {
        using var generator = new Generator(seed);
        _module = new FakeLmModule(vocab, hidden, inner, numLayers, generator);
        Shape = new ModelShape(hidden, numLayers, 1, 1, inner, vocab, maxPositions, false);
    }

    public FakeLmModule Net => _module;
    public ModelShape Shape { get; }

    public IReadOnlyList<LinearSlot> LinearSlots =>
        Enumerable.Range(0, Shape.NumHiddenLayers)
            .SelectMany(i => new[]
            {
                new LinearSlot($"layers.{i}.up_proj", "up_proj", i, LinearKind.MlpUp, Shape.HiddenSize, Shape.IntermediateSize),
                new LinearSlot($"layers.{i}.down_proj", "down_proj", i, LinearKind.MlpDown, Shape.IntermediateSize, Shape.HiddenSize),
            })
            .Append(new LinearSlot("lm_head", "lm_head", null, LinearKind.OutputHead, Shape.HiddenSize, Shape.VocabSize)).ToList();

    public string OutputHeadName => "lm_head";

    public ILinearLayer GetLinear(string name)
    {
        if (name == "lm_head") return _module.lm_head;
        var parts = name.Split('.');
        var block = _module.layers[int.Parse(parts[1])];
        return parts[2] == "up_proj" ? block.up_proj : block.down_proj;
    }

    public void SetLinear(string name, ILinearLayer layer) => throw new NotSupportedException("the trainer tests' model has fixed layers");

    public int? LayerIndexOf(string name) => name.StartsWith("layers.") ? int.Parse(name.Split('.')[1]) : null;

    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters() => _module.named_parameters();

    public Device Device => torch.CPU;

    public Tensor Logits(Tensor inputIds) => _module.forward(inputIds);

    public Tensor Forward(Tensor inputIds, KvCache? cache) =>
        cache is null ? _module.forward(inputIds) : throw new NotSupportedException("the trainer tests' model has no KV cache");

    public KvCache CreateKvCache(int batchSize = 1, int? capacity = null) => throw new NotSupportedException("the trainer tests' model has no KV cache");

    public nn.Module Module => _module;

    public bool ActivationCheckpointing { get => _module.Checkpointing; set => _module.Checkpointing = value; }

    public void CastFrozenWeights(ScalarType dtype, Func<string, bool> isTrainable)
    {
        var modules = new List<(string Prefix, nn.Module Module)> { ("embed_tokens", _module.embed_tokens), ("lm_head", _module.lm_head) };
        for (int i = 0; i < _module.layers.Count; i++)
        {
            modules.Add(($"layers.{i}.up_proj", _module.layers[i].up_proj));
            modules.Add(($"layers.{i}.down_proj", _module.layers[i].down_proj));
        }
        foreach (var (prefix, module) in modules)
            if (!isTrainable(prefix + ".weight")) module.to(dtype);
    }

    /// <summary>Freeze everything, then make the named parameters trainable; returns them as the trainable list.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Train(params string[] names)
    {
        var all = NamedParameters().ToList();
        foreach (var (_, p) in all) p.requires_grad_(false);
        var result = new List<(string, Parameter)>();
        foreach (var name in names)
        {
            var p = all.Single(x => x.Name == name).Parameter;
            p.requires_grad_(true);
            result.Add((name, p));
        }
        return result;
    }
}
