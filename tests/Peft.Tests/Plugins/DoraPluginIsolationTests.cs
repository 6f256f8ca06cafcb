using System.Runtime.Loader;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Host.Plugins;
using Peft.Tests.Model;
using static Peft.Tests.Plugins.PluginTestFolders;

namespace Peft.Tests.Plugins;

/// <summary>
/// The dora plugin carries a private copy of the LoRA assembly (docs/architecture.md, "LoRA variants"): it loads and
/// works without the lora plugin, next to it, and its LoRA copy lives in DoRA's own load context.
/// </summary>
public sealed class DoraPluginIsolationTests
{
    [Fact]
    public void Dora_loads_and_attaches_alone_from_a_folder_without_the_lora_plugin()
    {
        using var dir = new TempFolder();
        CopyFolder(Path.Combine(Bundled, "Dora"), dir.Sub("Dora"));
        Directory.GetFiles(dir.Sub("Dora"), "*.deps.json").Select(Path.GetFileName).Should().Equal("Peft.Plugins.Dora.deps.json");
        using var catalog = PluginCatalog.Load(new[] { dir.Path });
        catalog.Plugins.Select(p => p.Name).Should().Equal("dora");

        var method = catalog.Services.GetServices<IPeftMethod>().Single();
        method.Name.Should().Be("dora");
        using var model = TinyLlama.Create();
        var adapter = method.Attach(model, "default", new Microsoft.Extensions.Configuration.ConfigurationBuilder().Build());
        adapter.MethodName.Should().Be("dora");
        adapter.TrainableParameters.Should().Contain(p => p.Name.EndsWith(".lora_magnitude_vector.default.weight"));
    }

    [Fact]
    public void Next_to_lora_each_plugin_uses_its_own_copy_of_the_LoRA_assembly()
    {
        using var catalog = PluginCatalog.Load(new[] { Bundled });
        var methods = catalog.Services.GetServices<IPeftMethod>().ToDictionary(m => m.Name);
        var lora = methods["lora"].GetType().Assembly;
        var doraLora = methods["dora"].GetType().Assembly.GetReferencedAssemblies().Single(a => a.Name == "Peft.Plugins.Lora");
        var loaded = AssemblyLoadContext.GetLoadContext(methods["dora"].GetType().Assembly)!.Assemblies.Single(a => a.GetName().Name == doraLora.Name);
        ReferenceEquals(loaded, lora).Should().BeFalse("DoRA's LoRA copy is private to DoRA's context");
        AssemblyLoadContext.GetLoadContext(loaded).Should().NotBeSameAs(AssemblyLoadContext.GetLoadContext(lora));
    }
}
