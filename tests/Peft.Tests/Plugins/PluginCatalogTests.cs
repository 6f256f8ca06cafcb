using System.Diagnostics;
using System.Reflection;
using System.Runtime.Loader;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Training;
using Peft.Host.Plugins;
using TorchSharp.Modules;
using static Peft.Tests.Plugins.PluginTestFolders;

namespace Peft.Tests.Plugins;

public sealed class PluginCatalogTests
{
    static IConfiguration Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    [Fact]
    public void Host_and_tests_have_no_compile_time_reference_to_a_plugin()
    {
        foreach (var assembly in new[] { typeof(PluginCatalog).Assembly, typeof(PluginCatalogTests).Assembly })
            assembly.GetReferencedAssemblies().Select(a => a.Name).Should().NotContain(n => n!.StartsWith("Peft.Plugins") || n.StartsWith("Peft.TestPlugins"));
    }

    [Fact]
    public void Loads_the_five_bundled_plugins_with_name_version_and_path()
    {
        using var catalog = PluginCatalog.Load(new[] { Bundled });

        catalog.Plugins.Select(p => p.Name).Should().BeEquivalentTo(RealPlugins.Values);
        foreach (var (folder, name) in RealPlugins)
        {
            var plugin = catalog.Plugins.Single(p => p.Name == name);
            plugin.AssemblyPath.Should().Be(BundledAssembly(folder));
            // the informational version as the file's metadata says it, read without the loader
            plugin.Version.Should().Be(FileVersionInfo.GetVersionInfo(BundledAssembly(folder)).ProductVersion).And.StartWith("0.1.0");
            plugin.Description.Should().NotBeNullOrWhiteSpace();
            plugin.Instance.GetType().FullName.Should().StartWith($"Peft.Plugins.{folder}.");
        }
    }

    [Fact]
    public void Plugin_types_unify_with_the_host_while_the_plugin_lives_in_its_own_load_context()
    {
        using var catalog = PluginCatalog.Load(new[] { Bundled, TestPlugin("Sample") });
        var hostContext = AssemblyLoadContext.GetLoadContext(typeof(IPeftPlugin).Assembly);
        var shared = new[] { typeof(IPeftPlugin).Assembly, typeof(TorchSharp.torch).Assembly, typeof(IServiceCollection).Assembly, typeof(IConfiguration).Assembly, typeof(ConfigurationBinder).Assembly };

        foreach (var plugin in catalog.Plugins)
        {
            var context = AssemblyLoadContext.GetLoadContext(plugin.Assembly)!;
            context.Should().NotBeSameAs(hostContext, $"{plugin.Name} is isolated");
            plugin.Instance.GetType().GetInterface(nameof(IPeftPlugin)).Should().BeSameAs(typeof(IPeftPlugin));
            // what the plugin's context resolves for each shared assembly is the host's very Assembly object
            foreach (var assembly in shared)
                context.LoadFromAssemblyName(assembly.GetName()).Should().BeSameAs(assembly, $"{plugin.Name} shares {assembly.GetName().Name}");
        }
        var sample = catalog.Plugins.Single(p => p.Name == "sample");
        sample.Instance.GetType().GetProperty("TorchType")!.GetValue(null).Should().BeSameAs(typeof(TorchSharp.torch));
    }

    [Fact]
    public void Records_what_each_plugin_registered_and_looks_services_up_by_name()
    {
        using var catalog = PluginCatalog.Load(new[] { Bundled, TestPlugin("Sample") });
        var sample = catalog.Plugins.Single(p => p.Name == "sample");

        sample.Provides.Methods.Should().Equal("sample-method");
        sample.Provides.Quantizers.Should().Equal("sample-quantizer");
        sample.Provides.OptimizerStrategies.Should().Equal("sample-optimizer");
        sample.Provides.Hooks.Should().Equal("sample-hook");
        sample.Provides.ToString().Should().Be("methods: sample-method; quantizers: sample-quantizer; optimizer strategies: sample-optimizer; hooks: sample-hook");
        catalog.BuiltIns.IsEmpty.Should().BeTrue();

        var method = catalog.GetMethod("sample-method");
        method.GetType().Assembly.Should().BeSameAs(sample.Assembly);
        catalog.OwnerOf(method).Should().BeSameAs(sample);
        catalog.Services.GetServices<IPeftMethod>().Should().ContainSingle(m => m.Name == "sample-method").Which.Should().BeSameAs(method); // a singleton
        catalog.GetQuantizer("SAMPLE-QUANTIZER").BitsPerParameter(Config()).Should().Be(4.5); // names are case-insensitive
        catalog.GetOptimizerStrategy("sample-optimizer").Name.Should().Be("sample-optimizer");
        catalog.GetHookFactory("sample-hook").Name.Should().Be("sample-hook");
    }

    [Fact]
    public void Unknown_names_are_errors_naming_the_name_and_the_available_ones()
    {
        using var catalog = PluginCatalog.Load(new[] { TestPlugin("Sample") });

        catalog.Invoking(c => c.GetMethod("lorra")).Should().Throw<PeftConfigurationException>()
            .WithMessage("configuration key 'method:name' has value 'lorra': unknown method 'lorra' (available methods: sample-method)");
        catalog.Invoking(c => c.GetHookFactory("lisa", "hooks:1:name")).Should().Throw<PeftConfigurationException>()
            .WithMessage("*'hooks:1:name'*'lisa'*unknown hook*available hooks: sample-hook*");
        catalog.Invoking(c => c.GetQuantizer("nf4")).Should().Throw<PeftConfigurationException>().WithMessage("*'quantization:name'*'nf4'*sample-quantizer*");
        catalog.Invoking(c => c.GetOptimizerStrategy("adamw")).Should().Throw<PeftConfigurationException>().WithMessage("*'optimizer:name'*'adamw'*sample-optimizer*");

        using var empty = PluginCatalog.Load(Array.Empty<string>());
        empty.Invoking(c => c.GetMethod("lora")).Should().Throw<PeftConfigurationException>().WithMessage("*'lora'*no loaded plugin provides any method*");
    }

    [Fact]
    public void A_plugin_binds_its_options_with_the_shared_binder_and_throws_the_hosts_exception_type()
    {
        using var catalog = PluginCatalog.Load(new[] { TestPlugin("Sample") });
        var factory = catalog.GetHookFactory("sample-hook");
        var section = Config(("hooks:0:name", "sample-hook"), ("hooks:0:every_n_steps", "3")).GetSection("hooks:0");
        var hook = factory.Create(section);
        hook.GetType().GetProperty("EveryNSteps")!.GetValue(hook).Should().Be(3);

        var bad = Config(("hooks:0:name", "sample-hook"), ("hooks:0:every_n_step", "3")).GetSection("hooks:0");
        factory.Invoking(f => f.Create(bad)).Should().Throw<PeftConfigurationException>().WithMessage("*'hooks:0:every_n_step'*'3'*unknown key*every_n_steps*");
    }

    sealed class HostStrategy(string name) : IOptimizerStrategy
    {
        public string Name => name;
        public string Description => "built into the test host";
        public IPeftOptimizer Create(IReadOnlyList<(string Name, Parameter Parameter)> parameters, OptimizerSettings settings, IConfiguration options) =>
            throw new NotSupportedException();
    }

    [Fact]
    public void Host_built_ins_register_through_the_same_collection_and_may_not_clash_with_plugins()
    {
        using (var catalog = PluginCatalog.Load(new[] { TestPlugin("Sample") }, s => s.AddSingleton<IOptimizerStrategy>(new HostStrategy("test-adamw"))))
        {
            catalog.BuiltIns.OptimizerStrategies.Should().Equal("test-adamw");
            catalog.Plugins.Single().Provides.OptimizerStrategies.Should().Equal("sample-optimizer");
            catalog.OptimizerStrategyNames.Should().BeEquivalentTo("test-adamw", "sample-optimizer");
            var adamw = catalog.GetOptimizerStrategy("test-adamw");
            adamw.Should().BeOfType<HostStrategy>();
            catalog.OwnerOf(adamw).Should().BeNull();
        }

        var clash = () => PluginCatalog.Load(new[] { TestPlugin("Sample") }, s => s.AddSingleton<IOptimizerStrategy>(new HostStrategy("sample-optimizer")));
        clash.Should().Throw<PluginLoadException>()
            .WithMessage($"optimizer strategy name 'sample-optimizer' is registered twice: by the host (built in) and by plugin '{TestPluginAssembly("Sample")}'*");
    }

    [Fact]
    public void A_plugin_folder_dropped_into_a_plugin_directory_is_loaded_without_rebuilding()
    {
        using var temp = new TempFolder();
        CopyFolder(Path.Combine(Bundled, "Lisa"), temp.Sub("extra", "MyLisa"));

        // a directory of plugin folders
        using (var catalog = PluginCatalog.Load(new[] { temp.Sub("extra") }))
        {
            var lisa = catalog.Plugins.Should().ContainSingle().Which;
            lisa.Name.Should().Be("lisa");
            lisa.AssemblyPath.Should().Be(temp.Sub("extra", "MyLisa", "Peft.Plugins.Lisa.dll"));
            lisa.Instance.Should().BeAssignableTo<IPeftPlugin>();
        }
        // a plugin folder itself
        using (var catalog = PluginCatalog.Load(new[] { temp.Sub("extra", "MyLisa") }))
            catalog.Plugins.Should().ContainSingle().Which.AssemblyPath.Should().Be(temp.Sub("extra", "MyLisa", "Peft.Plugins.Lisa.dll"));
        // the same folder reached twice is loaded once
        using (var catalog = PluginCatalog.Load(new[] { temp.Sub("extra"), temp.Sub("extra", "MyLisa") }))
            catalog.Plugins.Should().ContainSingle();
    }

    [Fact]
    public void A_broken_dll_is_an_error_naming_the_file()
    {
        using var temp = new TempFolder();
        var folder = Directory.CreateDirectory(temp.Sub("plugins", "Broken")).FullName;
        File.WriteAllBytes(Path.Combine(folder, "Broken.dll"), Enumerable.Range(0, 4096).Select(i => (byte)(i * 37 + 11)).ToArray());
        File.WriteAllText(Path.Combine(folder, "Broken.deps.json"),
            """{"runtimeTarget":{"name":".NETCoreApp,Version=v10.0","signature":""},"targets":{".NETCoreApp,Version=v10.0":{"Broken/1.0.0":{"runtime":{"Broken.dll":{}}}}},"libraries":{"Broken/1.0.0":{"type":"project","serviceable":false,"sha512":""}}}""");

        var act = () => PluginCatalog.Load(new[] { temp.Sub("plugins") });
        var e = act.Should().Throw<PluginLoadException>().Which;
        e.Message.Should().StartWith($"plugin '{Path.Combine(folder, "Broken.dll")}': cannot load the assembly: BadImageFormatException");
        e.Paths.Should().Equal(Path.Combine(folder, "Broken.dll"));
    }

    [Fact]
    public void An_assembly_without_an_IPeftPlugin_is_an_error_naming_the_file()
    {
        var act = () => PluginCatalog.Load(new[] { TestPlugin("NoEntry") });
        act.Should().Throw<PluginLoadException>()
            .WithMessage($"plugin '{TestPluginAssembly("NoEntry")}': no public non-abstract class implements Peft.Abstractions.Plugins.IPeftPlugin");
    }

    [Fact]
    public void A_throwing_ConfigureServices_is_an_error_naming_the_file_and_the_reason()
    {
        var act = () => PluginCatalog.Load(new[] { TestPlugin("Sample"), TestPlugin("Throwing") });
        act.Should().Throw<PluginLoadException>()
            .WithMessage($"plugin '{TestPluginAssembly("Throwing")}': ConfigureServices of plugin 'throwing' failed: InvalidOperationException: deliberate failure in ThrowingPlugin")
            .Which.InnerException.Should().BeOfType<InvalidOperationException>();
    }

    [Fact]
    public void Two_plugins_with_the_same_name_are_an_error_naming_both_files()
    {
        using var temp = new TempFolder();
        CopyFolder(Path.Combine(Bundled, "Lora"), temp.Sub("plugins", "Lora"));
        CopyFolder(Path.Combine(Bundled, "Lora"), temp.Sub("plugins", "LoraCopy"));
        var first = temp.Sub("plugins", "Lora", "Peft.Plugins.Lora.dll");
        var second = temp.Sub("plugins", "LoraCopy", "Peft.Plugins.Lora.dll");

        var act = () => PluginCatalog.Load(new[] { temp.Sub("plugins") });
        var e = act.Should().Throw<PluginLoadException>().Which;
        e.Message.Should().Be($"two plugins are named 'lora': '{first}' and '{second}' (plugin names must be unique; remove one)");
        e.Paths.Should().Equal(first, second);
    }

    [Fact]
    public void Two_plugins_registering_the_same_method_name_are_an_error_naming_both_files()
    {
        var act = () => PluginCatalog.Load(new[] { TestPlugin("Sample"), TestPlugin("Clash") });
        var e = act.Should().Throw<PluginLoadException>().Which;
        e.Message.Should().Be($"method name 'sample-method' is registered twice: by plugin '{TestPluginAssembly("Sample")}' and by plugin '{TestPluginAssembly("Clash")}' (names must be unique; remove one of the plugins)");
        e.Paths.Should().Equal(TestPluginAssembly("Sample"), TestPluginAssembly("Clash"));
    }

    [Fact]
    public void Folders_that_are_not_plugins_and_missing_directories_are_errors_naming_them()
    {
        using var temp = new TempFolder();
        Directory.CreateDirectory(temp.Sub("plugins", "Notes"));
        File.WriteAllText(temp.Sub("plugins", "Notes", "readme.txt"), "not a plugin");

        var notPlugin = () => PluginCatalog.Load(new[] { temp.Sub("plugins") });
        notPlugin.Should().Throw<PluginLoadException>().WithMessage($"plugin '{temp.Sub("plugins", "Notes")}': not a plugin folder: no X.dll next to X.deps.json*");

        var missing = () => PluginCatalog.Load(new[] { temp.Sub("nowhere") });
        missing.Should().Throw<PluginLoadException>().WithMessage($"plugin '{temp.Sub("nowhere")}': plugin directory does not exist");

        using var none = PluginCatalog.Load(new[] { temp.Sub("nowhere") }, optionalDirectories: new[] { temp.Sub("nowhere") });
        none.Plugins.Should().BeEmpty();
    }
}
