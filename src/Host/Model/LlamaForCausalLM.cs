using System.Text.RegularExpressions;
using Peft.Abstractions.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Model;

/// <summary>
/// A Llama-family decoder-only language model (HF's LlamaForCausalLM): ids (B, T) int64 -> logits (B, T, V) fp32.
/// Its module tree gives HF's parameter names (<c>model.layers.0.self_attn.q_proj.weight</c>, <c>lm_head.weight</c>);
/// with <c>tie_word_embeddings</c> the head reuses <c>model.embed_tokens.weight</c> and has no parameter of its own.
/// Parameters live in a storage dtype (fp32, bf16 or fp16) on one device and are built there; compute is fp32.
/// Every linear layer is a slot addressed by its HF module name (<see cref="GetLinear"/>, <see cref="SetLinear"/>).
/// </summary>
public sealed partial class LlamaForCausalLM : nn.Module<Tensor, Tensor>, ICausalLanguageModel, IBaseWeightsCaster, IActivationCheckpointing, IHiddenStatesModel
{
    public const string HeadName = "lm_head";

#pragma warning disable IDE1006 // HF module names
    readonly LlamaModel model;
    ILinearLayer lm_head;
#pragma warning restore IDE1006
    readonly Dictionary<string, (ILinearSlotOwner Owner, string Slot)> _slotOwners = new(StringComparer.Ordinal);
    readonly IReadOnlyList<LinearSlot> _slots;
    readonly HeadSlot _headSlot;

    /// <summary>
    /// Build the model on <paramref name="device"/>. With <paramref name="initialize"/>, weights follow HF's
    /// <c>_init_weights</c> (linears and embedding ~ N(0, initializer_range), norms 1); otherwise they are zero
    /// (to be overwritten by a checkpoint).
    /// </summary>
    public LlamaForCausalLM(LlamaConfig config, ScalarType storageDtype = ScalarType.Float32, Device? device = null,
                            bool initialize = true)
        : base(nameof(LlamaForCausalLM))
    {
        if (storageDtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"storage dtype must be Float32, BFloat16 or Float16, not {storageDtype}");
        config.Validate("LlamaConfig");
        Config = config;
        StorageDtype = storageDtype;
        Device = device ?? torch.CPU;
        model = new LlamaModel(config, storageDtype, Device);
        lm_head = config.TieWordEmbeddings
            ? new TiedOutputHead(() => model.embed_tokens.Weight, config.HiddenSize, config.VocabSize)
            : new BaseLinear(config.HiddenSize, config.VocabSize, false, storageDtype, Device);
        _headSlot = new HeadSlot(this);
        register_module("model", model);
        register_module(HeadName, lm_head.Module);
        RegisterComponents();

        _slots = LlamaLayout.Slots(config.ToShape(), config.HeadDim);
        foreach (var slot in _slots)
        {
            ILinearSlotOwner owner = slot.LayerIndex is not { } i ? _headSlot
                : slot.Kind is LinearKind.MlpGate or LinearKind.MlpUp or LinearKind.MlpDown ? model.layers[i].mlp
                : model.layers[i].self_attn;
            _slotOwners[slot.Name] = (owner, slot.ShortName);
        }

        if (initialize) InitializeWeights();
    }

    public LlamaConfig Config { get; }
    /// <summary>
    /// The dtype the model was built in (and that <see cref="HfModelFolder.Save"/> writes);
    /// <see cref="CastFrozenWeights"/> does not change it.
    /// </summary>
    public ScalarType StorageDtype { get; }
    public Device Device { get; }
    public ModelShape Shape => Config.ToShape();
    public IReadOnlyList<LinearSlot> LinearSlots => _slots;
    public IReadOnlyList<string> LinearLayerNames => _slots.Select(s => s.Name).ToList();
    public string OutputHeadName => HeadName;
    public nn.Module Module => this;

    /// <summary>The token embedding parameter (vocab, hidden), <c>model.embed_tokens.weight</c>.</summary>
    public Parameter EmbeddingWeight => model.embed_tokens.Weight;

    public ILinearLayer GetLinear(string name)
    {
        var (owner, slot) = Lookup(name);
        return owner.GetSlot(slot);
    }

    public void SetLinear(string name, ILinearLayer layer)
    {
        var (owner, slot) = Lookup(name);
        owner.SetSlot(slot, layer);
    }

    (ILinearSlotOwner, string) Lookup(string name) =>
        _slotOwners.TryGetValue(name, out var hit)
            ? hit
            : throw new KeyNotFoundException(
                $"the model has no linear layer '{name}' (names look like 'model.layers.0.self_attn.q_proj', " +
                $"'model.layers.0.mlp.down_proj' or 'lm_head'; layers 0..{Config.NumHiddenLayers - 1})");

    [GeneratedRegex(@"(?:^|\.)layers\.(\d+)(?:\.|$)")]
    private static partial Regex LayerIndexPattern();

    public int? LayerIndexOf(string name)
    {
        var m = LayerIndexPattern().Match(name);
        return m.Success && int.TryParse(m.Groups[1].Value, out var i) ? i : null;
    }

    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters() =>
        named_parameters().Select(p => (p.name, p.parameter));

    /// <summary>ids (B, T) int64 -> logits (B, T, V) fp32, positions 0..T-1, causal mask, no cache.</summary>
    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null);

    public Tensor Logits(Tensor inputIds) => Forward(inputIds, null);

    /// <summary>
    /// Whether the model (with whatever adapter it carries) overflows float32 on a short probe sequence (token ids
    /// 0..15): the first decoder layer whose output or RMSNorm statistics are not finite, with its largest |h|;
    /// null when every layer stays finite. Runs in eval mode and restores the mode.
    /// </summary>
    public (int Layer, double MaxAbs)? FirstSaturatedLayer()
    {
        bool wasTraining = training;
        eval();
        try
        {
            long t = Math.Min(16, Math.Min(Config.VocabSize, Config.MaxPositionEmbeddings));
            using var ids = torch.arange(t, dtype: ScalarType.Int64, device: Device).unsqueeze(0);
            return model.FirstSaturatedLayer(ids);
        }
        finally { if (wasTraining) train(); }
    }

    /// <summary>
    /// ids (B, T) -> logits (B, T, V) fp32. With a cache the ids continue the cached sequence (positions
    /// cache.Length ..) and their keys/values are added to it.
    /// </summary>
    public Tensor Forward(Tensor inputIds, KvCache? cache)
    {
        if (inputIds.dim() != 2) throw new ArgumentException($"input_ids must be (batch, seq), got [{string.Join(", ", inputIds.shape)}]");
        long end = (cache?.Length ?? 0) + inputIds.shape[1];
        if (end > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"sequence of {end} positions exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        using var scope = torch.NewDisposeScope();
        var hidden = model.call(inputIds, cache);              // (B, T, D)
        var logits = lm_head.Module.call(hidden);               // (B, T, V)
        return logits.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>ids (B, T) -> the final normalized hidden states (B, T, D) fp32, no cache (the head is not applied).</summary>
    public Tensor HiddenStates(Tensor inputIds)
    {
        if (inputIds.dim() != 2) throw new ArgumentException($"input_ids must be (batch, seq), got [{string.Join(", ", inputIds.shape)}]");
        if (inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"sequence of {inputIds.shape[1]} positions exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        using var scope = torch.NewDisposeScope();
        var hidden = model.call(inputIds, null);
        return (hidden.dtype == ScalarType.Float32 ? hidden : hidden.to(ScalarType.Float32)).MoveToOuterDisposeScope();
    }

    public ILinearLayer OutputHead => lm_head;

    /// <summary>
    /// Recompute each decoder layer in the backward pass instead of keeping its activations (training mode, no KV
    /// cache); the losses and gradients are those of the plain pass.
    /// </summary>
    public bool ActivationCheckpointing
    {
        get => model.ActivationCheckpointing;
        set => model.ActivationCheckpointing = value;
    }

    /// <summary>
    /// Store the frozen floating-point parameters of the model's own layers (linear, RMSNorm, embedding — also a
    /// linear wrapped by an adapter, e.g. <c>…q_proj.base_layer.weight</c>) in <paramref name="dtype"/>; the layers
    /// upcast them per call, so compute stays fp32. A parameter is kept as it is when
    /// <paramref name="isTrainable"/> names it or it requires grad (it may be in an optimizer: same object, same
    /// storage). A re-stored parameter is a new Parameter object (torch's <c>set_</c> cannot change a dtype); the
    /// tied head reads <c>model.embed_tokens.weight</c> at each call and follows. Parameters of modules the model
    /// does not own (an adapter's own tensors) are left alone: the model cannot know that they upcast.
    /// </summary>
    public void CastFrozenWeights(ScalarType dtype, Func<string, bool> isTrainable)
    {
        if (!ParameterStorage.IsSupported(dtype))
            throw new ArgumentException($"frozen weights can be stored in Float32, BFloat16 or Float16, not {dtype}", nameof(dtype));
        ArgumentNullException.ThrowIfNull(isTrainable);
        foreach (var (prefix, module) in named_modules().ToList())
        {
            if (module is not IStorageDtypeLayer layer) continue;
            foreach (var (local, p) in module.named_parameters(recurse: false).ToList())
            {
                string name = $"{prefix}.{local}";
                if (!p.is_floating_point() || p.dtype == dtype || p.requires_grad || isTrainable(name)) continue;
                layer.StoreParameterAs(local, dtype);
            }
        }
    }

    public KvCache CreateKvCache(int batchSize = 1, int? capacity = null) =>
        new(Config.NumHiddenLayers, batchSize, Config.NumKeyValueHeads, capacity ?? Config.MaxPositionEmbeddings, Config.HeadDim, Device);

    void InitializeWeights()
    {
        using var _ = torch.no_grad();
        double std = Config.InitializerRange;
        foreach (var (name, p) in named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(1.0);
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) p.zero_();
            else p.normal_(0.0, std);
        }
    }

    /// <summary>The lm_head slot: replacing it re-registers the child so parameters follow.</summary>
    sealed class HeadSlot(LlamaForCausalLM owner) : ILinearSlotOwner
    {
        public ILinearLayer GetSlot(string slot) => owner.lm_head;

        public void SetSlot(string slot, ILinearLayer layer)
        {
            LinearSlotChecks.CheckReplacement(slot, owner.lm_head, layer);
            owner.lm_head = layer;
            owner.ClearModules();
            owner.register_module("model", owner.model);
            owner.register_module(HeadName, layer.Module);
        }
    }
}
