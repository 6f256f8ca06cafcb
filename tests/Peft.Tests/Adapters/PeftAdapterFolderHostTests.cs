using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Host.Adapters;
using Peft.Host.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Tests.Adapters;

/// <summary>
/// Host-side adapter folder behaviour with a minimal fake method (the real LoRA round trips are in
/// Peft.Plugins.Tests, which may reference the plugin).
/// </summary>
public sealed class PeftAdapterFolderHostTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "peft-adapter-host-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    /// <summary>An adapter with a fixed set of named parameters.</summary>
    sealed class FakeAdapter(string name, Dictionary<string, Parameter> parameters, bool failStateDict = false) : IAdapter
    {
        public bool RemoveCalled { get; private set; }
        public string Name => name;
        public string MethodName => "fake";
        public IReadOnlyList<string> TargetModules => parameters.Keys.Select(k => k[..k.LastIndexOf('.')]).ToList();
        public IReadOnlyList<(string Name, Parameter Parameter)> TrainableParameters => parameters.Select(kv => (kv.Key, kv.Value)).ToList();
        public IReadOnlyDictionary<string, Tensor> GetStateDict() =>
            failStateDict ? throw new InvalidOperationException("boom") : parameters.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        public void LoadStateDict(IReadOnlyDictionary<string, Tensor> tensors)
        {
            using var _ = torch.no_grad();
            foreach (var (k, t) in tensors) parameters[k].copy_(t);
        }
        public JsonObject ToAdapterConfig() => new() { ["peft_type"] = "FAKE", ["zeta"] = 1, ["alpha_pattern"] = new JsonObject { ["z"] = 1, ["a"] = 2 } };
        public bool Enabled { get; set; } = true;
        public bool Merged => false;
        public void Merge(bool safe = true) { }
        public void Unmerge() { }
        public void Remove() => RemoveCalled = true;
        public void MergeAndUnload(bool safe = true) => throw new NotSupportedException();
    }

    sealed class FakeMethod : IPeftMethod
    {
        public FakeAdapter? Last;
        public string Name => "fake";
        public string? PeftType => "FAKE";
        public string Description => "test";
        public IAdapter Attach(IPeftModel model, string adapterName, IConfiguration options) => throw new NotSupportedException();
        public IAdapter? AttachFromAdapterConfig(IPeftModel model, string adapterName, JsonObject adapterConfig) =>
            Last = new FakeAdapter(adapterName, NewParameters());
    }

    static Dictionary<string, Parameter> NewParameters() => new()
    {
        ["model.layers.0.mlp.up_proj.w"] = new Parameter(torch.zeros(3, 2)),
        ["model.layers.0.mlp.up_proj.v"] = new Parameter(torch.zeros(4)),
    };

    [Fact]
    public void Sorted_json_sorts_nested_keys_ordinally_with_two_space_indent()
    {
        var json = PeftAdapterFolder.ToSortedJson(new JsonObject { ["b"] = 1, ["B"] = new JsonObject { ["y"] = "q_proj|v_proj", ["x"] = null }, ["a"] = new JsonArray(2, 1) });
        json.Should().Be("{\n  \"B\": {\n    \"x\": null,\n    \"y\": \"q_proj|v_proj\"\n  },\n  \"a\": [\n    2,\n    1\n  ],\n  \"b\": 1\n}");
    }

    [Fact]
    public void Save_writes_prefixed_keys_pt_metadata_and_the_host_fields()
    {
        var adapter = new FakeAdapter("default", NewParameters());
        using (torch.no_grad()) adapter.TrainableParameters[0].Parameter.copy_(torch.arange(6).reshape(3, 2));
        PeftAdapterFolder.Save(adapter, _dir, "base/model", ScalarType.BFloat16);

        var (infos, meta, _) = Safetensors.ReadHeader(Path.Combine(_dir, "adapter_model.safetensors"));
        infos.Select(i => (i.Name, i.DType)).Should().BeEquivalentTo(new[]
        {
            ("base_model.model.model.layers.0.mlp.up_proj.v", "BF16"),
            ("base_model.model.model.layers.0.mlp.up_proj.w", "BF16"),
        });
        meta["format"].Should().Be("pt");

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "adapter_config.json")))!.AsObject();
        config.Select(kv => kv.Key).Should().Equal("alpha_pattern", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version", "task_type", "zeta");
        config["base_model_name_or_path"]!.GetValue<string>().Should().Be("base/model");
        config["task_type"]!.GetValue<string>().Should().Be("CAUSAL_LM");
        config["alpha_pattern"]!.AsObject().Select(kv => kv.Key).Should().Equal("a", "z");
    }

    [Fact]
    public void A_failing_save_leaves_no_folder_and_no_temporary_files()
    {
        var adapter = new FakeAdapter("default", NewParameters(), failStateDict: true);
        var act = () => PeftAdapterFolder.Save(adapter, Path.Combine(_dir, "out"), null);
        act.Should().Throw<InvalidOperationException>();
        Directory.Exists(Path.Combine(_dir, "out")).Should().BeFalse();
        (Directory.Exists(_dir) ? Directory.GetFileSystemEntries(_dir) : []).Should().BeEmpty();
    }

    [Fact]
    public void Load_finds_the_method_by_peft_type_and_strips_the_prefix()
    {
        var saved = new FakeAdapter("default", NewParameters());
        using (torch.no_grad()) saved.TrainableParameters[1].Parameter.copy_(torch.tensor(new float[] { 1, 2, 3, 4 }));
        PeftAdapterFolder.Save(saved, _dir, null);

        var method = new FakeMethod();
        var loaded = PeftAdapterFolder.Load(_dir, null!, [method]);
        loaded.Should().BeSameAs(method.Last);
        loaded.GetStateDict()["model.layers.0.mlp.up_proj.v"].data<float>().ToArray().Should().Equal(1, 2, 3, 4);
    }

    [Fact]
    public void Load_errors_name_the_file_and_undo_the_attach()
    {
        var saved = new FakeAdapter("default", NewParameters());
        PeftAdapterFolder.Save(saved, _dir, null);

        var noMethod = () => PeftAdapterFolder.Load(_dir, null!, []);
        noMethod.Should().Throw<PeftFormatException>().WithMessage("*adapter_config.json*peft_type 'FAKE'*");

        // a tensor the adapter does not have
        var tensors = Safetensors.Load(Path.Combine(_dir, "adapter_model.safetensors"));
        tensors["base_model.model.model.layers.9.mlp.up_proj.w"] = torch.zeros(3, 2);
        Safetensors.Save(Path.Combine(_dir, "adapter_model.safetensors"), tensors);
        foreach (var t in tensors.Values) t.Dispose();
        var method = new FakeMethod();
        var act = () => PeftAdapterFolder.Load(_dir, null!, [method]);
        act.Should().Throw<PeftFormatException>().WithMessage("*adapter_model.safetensors*'base_model.model.model.layers.9.mlp.up_proj.w'*matches no module*");
        method.Last!.RemoveCalled.Should().BeTrue();

        File.Delete(Path.Combine(_dir, "adapter_config.json"));
        act.Should().Throw<PeftFormatException>().WithMessage("*adapter_config.json*not found*");
    }
}
