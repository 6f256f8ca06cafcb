using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Host.Adapters;
using Peft.Host.Formats;
using Peft.Host.Import;
using Peft.Host.Model;
using Peft.Host.Plugins;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.ContractKit;

/// <summary>
/// Binds <see cref="PeftMethodContract"/> to the peft host: methods come from the REAL plugin loader
/// (<see cref="PluginCatalog"/>) over the plugin folders you name (a plugin's build output, or a folder of plugin
/// folders), models are the host's <see cref="LlamaForCausalLM"/>, adapters are written and read as HF PEFT folders
/// (<see cref="PeftAdapterFolder"/>), exactly as <c>peft train</c> and <c>peft eval</c> do.
/// <code>
/// var host = PeftContractHost.TinyLlama([Path.GetDirectoryName(typeof(MyPlugin).Assembly.Location)!]);
/// PeftMethodContract.Check(ContractProperty.MergeMatchesUnmerged, host, new MethodCase("my-method", options));
/// </code>
/// Hosts are cached per model and plugin folder set (the plugins are loaded once per process).
/// </summary>
public sealed class PeftContractHost : IContractHost
{
    /// <summary>A seeded random Llama (2 layers, hidden 32, vocabulary 64): fast, needs no data.</summary>
    public const string TinyLlamaName = "tiny-llama";

    /// <summary>Karpathy's stories260K (llama2.c), imported by the host's importer.</summary>
    public const string Stories260KName = "stories260K";

    static readonly Dictionary<string, (LlamaConfig Config, List<(string, Tensor)> Weights, int SeqLen)> Models = new();
    static readonly Dictionary<string, PluginCatalog> Catalogs = new();
    static readonly object Gate = new();

    readonly LlamaConfig _config;
    readonly IReadOnlyList<(string Name, Tensor Tensor)> _weights;
    readonly long[] _ids;
    readonly int _seqLen;

    PeftContractHost(string name, LlamaConfig config, IReadOnlyList<(string Name, Tensor Tensor)> weights, int seqLen, PluginCatalog plugins)
    {
        ModelName = name;
        _config = config;
        _weights = weights;
        _seqLen = seqLen;
        Plugins = plugins;
        var random = new Random(1234);
        _ids = Enumerable.Range(0, 2 * seqLen).Select(_ => (long)random.Next(1, config.VocabSize)).ToArray();
    }

    /// <summary>The contract on a tiny seeded Llama, with the methods of the plugins in <paramref name="pluginDirectories"/>.</summary>
    public static PeftContractHost TinyLlama(IEnumerable<string> pluginDirectories)
    {
        lock (Gate)
        {
            if (!Models.TryGetValue(TinyLlamaName, out var m)) Models[TinyLlamaName] = m = CreateTiny();
            return new PeftContractHost(TinyLlamaName, m.Config, m.Weights, m.SeqLen, CatalogFor(pluginDirectories));
        }
    }

    /// <summary>
    /// The contract on stories260K: <paramref name="llama2cDirectory"/> holds <c>stories260K.bin</c> and
    /// <c>tok512.model</c> (this repository's <c>data/stories260K</c>).
    /// </summary>
    public static PeftContractHost Stories260K(string llama2cDirectory, IEnumerable<string> pluginDirectories)
    {
        lock (Gate)
        {
            var key = Stories260KName + "|" + Path.GetFullPath(llama2cDirectory);
            if (!Models.TryGetValue(key, out var m)) Models[key] = m = CreateStories260K(llama2cDirectory);
            return new PeftContractHost(Stories260KName, m.Config, m.Weights, m.SeqLen, CatalogFor(pluginDirectories));
        }
    }

    /// <summary>The plugins loaded from the folders (one catalog per folder set and process).</summary>
    public static PluginCatalog CatalogFor(IEnumerable<string> pluginDirectories)
    {
        var dirs = pluginDirectories.Select(Path.GetFullPath).ToList();
        var key = string.Join("|", dirs);
        lock (Gate)
        {
            if (!Catalogs.TryGetValue(key, out var catalog)) Catalogs[key] = catalog = PluginCatalog.Load(dirs);
            return catalog;
        }
    }

    /// <summary>The loaded plugins this host takes methods from.</summary>
    public PluginCatalog Plugins { get; }

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

    static (LlamaConfig, List<(string, Tensor)>, int) CreateTiny()
    {
        var config = new LlamaConfig
        {
            HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            VocabSize = 64, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5, TieWordEmbeddings = false,
        };
        using var model = new LlamaForCausalLM(config);
        using (torch.no_grad())
        using (torch.NewDisposeScope())   // the temporaries below stay referenced while LibTorch reads them (a GC on another thread cannot finalize them mid-op)
        {
            // Weights from a seeded generator (not the global one other tests share); norms away from 1 so they matter.
            var generator = new Generator(42);
            foreach (var (_, p) in model.named_parameters())
                p.copy_(torch.randn(p.shape, generator: generator) * (p.dim() == 1 ? 0.1 : 0.2) + (p.dim() == 1 ? 1.0 : 0.0));
        }
        return (config, Snapshot(model), 12);
    }

    static (LlamaConfig, List<(string, Tensor)>, int) CreateStories260K(string data)
    {
        var dir = Directory.CreateTempSubdirectory("peft-contract-stories-").FullName;
        try
        {
            var modelDir = Path.Combine(dir, "stories260K");
            Llama2cImporter.Import(Path.Combine(data, "stories260K.bin"), Path.Combine(data, "tok512.model"), modelDir);
            using var model = HfModelFolder.Load(modelDir);
            return (model.Config, Snapshot(model), 24);
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
