using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Contract.Tests.Contract;
using Peft.Host.Adapters;
using Peft.Host.Formats;
using Peft.Host.Import;
using Peft.Host.Model;
using Peft.Host.Plugins;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Contract.Tests.Host;

/// <summary>
/// Binds the contract to the peft host: methods come from the REAL plugin loader (<see cref="PluginCatalog"/>) over
/// the bundled plugins (plugins/) and the test plugins (testplugins/), models are <see cref="LlamaForCausalLM"/>,
/// adapters are written and read as HF PEFT folders (<see cref="PeftAdapterFolder"/>).
/// </summary>
public sealed class HostContractHost : IContractHost
{
    public const string TinyLlama = "tiny-llama";
    public const string Stories260K = "stories260K";

    public static IReadOnlyList<string> ModelNames { get; } = [TinyLlama, Stories260K];

    static readonly Lazy<PluginCatalog> Catalog = new(() => PluginCatalog.Load(
        [Path.Combine(AppContext.BaseDirectory, "plugins"), Path.Combine(AppContext.BaseDirectory, "testplugins", "Methods")]));

    static readonly Dictionary<string, HostContractHost> Hosts = new();

    readonly LlamaConfig _config;
    readonly IReadOnlyList<(string Name, Tensor Tensor)> _weights;
    readonly long[] _ids;
    readonly int _seqLen;

    HostContractHost(string name, LlamaConfig config, IReadOnlyList<(string Name, Tensor Tensor)> weights, int seqLen)
    {
        ModelName = name;
        _config = config;
        _weights = weights;
        _seqLen = seqLen;
        var random = new Random(1234);
        _ids = Enumerable.Range(0, 2 * seqLen).Select(_ => (long)random.Next(1, config.VocabSize)).ToArray();
    }

    /// <summary>The host for a base model, built once per process (the weights are kept and copied into every fresh model).</summary>
    public static HostContractHost For(string modelName)
    {
        lock (Hosts)
        {
            if (Hosts.TryGetValue(modelName, out var host)) return host;
            host = modelName switch
            {
                TinyLlama => CreateTiny(),
                Stories260K => CreateStories260K(),
                _ => throw new ArgumentException($"unknown contract model '{modelName}' (known: {string.Join(", ", ModelNames)})"),
            };
            Hosts[modelName] = host;
            return host;
        }
    }

    /// <summary>The loaded plugins (bundled and test plugins), shared by every test.</summary>
    public static PluginCatalog Plugins => Catalog.Value;

    public string ModelName { get; }

    public IContractModel CreateModel()
    {
        var model = new LlamaForCausalLM(_config);
        using (torch.no_grad())
        {
            var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, tensor) in _weights) parameters[name].copy_(tensor);
        }
        return new HostModel(model);
    }

    public Tensor SampleInputIds() => torch.tensor(_ids, [2, _seqLen], dtype: ScalarType.Int64);

    public IPeftMethod Method(string name) => Plugins.GetMethod(name);

    public void SaveAdapter(IAdapter adapter, string directory) => PeftAdapterFolder.Save(adapter, directory, baseModelNameOrPath: ModelName);

    public IAdapter LoadAdapter(string directory, IPeftModel model) =>
        PeftAdapterFolder.Load(directory, model, Plugins.Services.GetServices<IPeftMethod>());

    public void RewriteAdapterTensors(string directory, Func<IReadOnlyDictionary<string, Tensor>, Dictionary<string, Tensor>> change)
    {
        var path = Path.Combine(directory, PeftAdapterFolder.WeightsFileName);
        using var scope = torch.NewDisposeScope();
        var stored = Safetensors.Load(path);
        var stripped = stored.ToDictionary(kv => kv.Key.StartsWith(PeftAdapterFolder.KeyPrefix, StringComparison.Ordinal)
            ? kv.Key[PeftAdapterFolder.KeyPrefix.Length..] : kv.Key, kv => kv.Value);
        var changed = change(stripped).ToDictionary(kv => PeftAdapterFolder.KeyPrefix + kv.Key, kv => kv.Value);
        Safetensors.Save(path, changed, new Dictionary<string, string> { ["format"] = "pt" });
    }

    static HostContractHost CreateTiny()
    {
        var config = new LlamaConfig
        {
            HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            VocabSize = 64, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5, TieWordEmbeddings = false,
        };
        using var model = new LlamaForCausalLM(config);
        using (torch.no_grad())
        {
            // Weights from a seeded generator (not the global one other tests share); norms away from 1 so they matter.
            var generator = new Generator(42);
            foreach (var (_, p) in model.named_parameters())
                p.copy_(torch.randn(p.shape, generator: generator) * (p.dim() == 1 ? 0.1 : 0.2) + (p.dim() == 1 ? 1.0 : 0.0));
        }
        return new HostContractHost(TinyLlama, config, Snapshot(model), seqLen: 12);
    }

    static HostContractHost CreateStories260K()
    {
        var data = Peft.Testing.TestData.Repo("stories260K");
        var dir = Directory.CreateTempSubdirectory("peft-contract-stories-").FullName;
        try
        {
            var modelDir = Path.Combine(dir, "stories260K");
            Llama2cImporter.Import(Path.Combine(data, "stories260K.bin"), Path.Combine(data, "tok512.model"), modelDir);
            using var model = HfModelFolder.Load(modelDir);
            return new HostContractHost(Stories260K, model.Config, Snapshot(model), seqLen: 24);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    static List<(string, Tensor)> Snapshot(LlamaForCausalLM model) =>
        model.named_parameters().Select(p => (p.name, p.parameter.detach().clone().DetachFromDisposeScope())).ToList();

    sealed class HostModel(LlamaForCausalLM model) : IContractModel
    {
        public IPeftModel Model => model;
        public Tensor Logits(Tensor inputIds) => model.Logits(inputIds);
        public void Train(bool training) => model.train(training);
        public void Dispose() => model.Dispose();
    }
}
