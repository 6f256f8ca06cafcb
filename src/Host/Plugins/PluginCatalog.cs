using System.Reflection;
using System.Runtime.Loader;
using System.Text.Json;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Optimization;
using Peft.Abstractions.Plugins;
using Peft.Abstractions.Quantization;
using Peft.Abstractions.Training;
using TorchSharp;

namespace Peft.Host.Plugins;

/// <summary>
/// The plugins the host loaded at run time and the services they registered, built into one
/// <see cref="IServiceProvider"/> together with the host's built-in services.
/// <para>
/// Loading: each plugin's main assembly goes into its own load context (McMaster.NETCore.Plugins) that
/// prefers the host's copies of shared assemblies, so the contracts (Peft.Abstractions), TorchSharp and
/// Microsoft.Extensions.* types a plugin sees are the host's. The single public non-abstract
/// <see cref="IPeftPlugin"/> class is created and its <see cref="IPeftPlugin.ConfigureServices"/> called into
/// the shared <see cref="IServiceCollection"/>; the descriptors it added are its provenance. After the
/// provider is built, every <see cref="IPeftMethod"/>, <see cref="IQuantizer"/>, <see cref="IOptimizerStrategy"/>
/// and <see cref="ITrainingHookFactory"/> is resolved to read its name. Any failure, or a name claimed twice,
/// is a <see cref="PluginLoadException"/> naming the file(s).
/// </para>
/// </summary>
public sealed class PluginCatalog : IDisposable
{
    /// <summary>Types whose assemblies (and their dependencies) plugins share with the host.</summary>
    static readonly Type[] SharedTypes =
    {
        typeof(IPeftPlugin),                 // Peft.Abstractions
        typeof(IServiceCollection),          // Microsoft.Extensions.DependencyInjection.Abstractions
        typeof(IConfiguration),              // Microsoft.Extensions.Configuration.Abstractions
        typeof(ConfigurationBinder),         // Microsoft.Extensions.Configuration.Binder
        typeof(torch),                       // TorchSharp
    };

    /// <summary>What the host indexes by name, and how a lookup miss is reported.</summary>
    sealed record Kind(Type ServiceType, string Singular, string Plural, string DefaultConfigKey, Func<object, string> NameOf);

    static readonly Kind MethodKind = new(typeof(IPeftMethod), "method", "methods", "method:name", o => ((IPeftMethod)o).Name);
    static readonly Kind QuantizerKind = new(typeof(IQuantizer), "quantizer", "quantizers", "quantization:name", o => ((IQuantizer)o).Name);
    static readonly Kind OptimizerKind = new(typeof(IOptimizerStrategy), "optimizer strategy", "optimizer strategies", "optimizer:name", o => ((IOptimizerStrategy)o).Name);
    static readonly Kind HookKind = new(typeof(ITrainingHookFactory), "hook", "hooks", "hooks:name", o => ((ITrainingHookFactory)o).Name);
    static readonly Kind[] Kinds = { MethodKind, QuantizerKind, OptimizerKind, HookKind };

    /// <summary>One named service and who registered it (null: the host).</summary>
    sealed record Entry(object Instance, LoadedPlugin? Owner);

    readonly Dictionary<Kind, Dictionary<string, Entry>> _byName;
    readonly ServiceProvider _provider;
    readonly List<PluginLoader> _loaders;

    PluginCatalog(IReadOnlyList<LoadedPlugin> plugins, ProvidedServices builtIns, Dictionary<Kind, Dictionary<string, Entry>> byName,
        ServiceProvider provider, List<PluginLoader> loaders)
    {
        Plugins = plugins;
        BuiltIns = builtIns;
        _byName = byName;
        _provider = provider;
        _loaders = loaders;
    }

    /// <summary>The loaded plugins, in load order.</summary>
    public IReadOnlyList<LoadedPlugin> Plugins { get; }

    /// <summary>What the host registered itself (e.g. the AdamW optimizer strategy).</summary>
    public ProvidedServices BuiltIns { get; }

    /// <summary>Every service the host and the plugins registered.</summary>
    public IServiceProvider Services => _provider;

    public IReadOnlyCollection<string> MethodNames => _byName[MethodKind].Keys;
    public IReadOnlyCollection<string> QuantizerNames => _byName[QuantizerKind].Keys;
    public IReadOnlyCollection<string> OptimizerStrategyNames => _byName[OptimizerKind].Keys;
    public IReadOnlyCollection<string> HookNames => _byName[HookKind].Keys;

    /// <summary>The method called <paramref name="name"/>; an unknown name throws naming it and the available ones.</summary>
    /// <param name="configKey">The configuration key the name came from, for the error message.</param>
    public IPeftMethod GetMethod(string name, string? configKey = null) => (IPeftMethod)Get(MethodKind, name, configKey);

    public IQuantizer GetQuantizer(string name, string? configKey = null) => (IQuantizer)Get(QuantizerKind, name, configKey);

    public IOptimizerStrategy GetOptimizerStrategy(string name, string? configKey = null) => (IOptimizerStrategy)Get(OptimizerKind, name, configKey);

    public ITrainingHookFactory GetHookFactory(string name, string? configKey = null) => (ITrainingHookFactory)Get(HookKind, name, configKey);

    /// <summary>The plugin that registered a method/quantizer/strategy/hook instance, or null for the host's own.</summary>
    public LoadedPlugin? OwnerOf(object service) =>
        _byName.Values.SelectMany(d => d.Values).FirstOrDefault(e => ReferenceEquals(e.Instance, service))?.Owner;

    object Get(Kind kind, string name, string? configKey)
    {
        if (_byName[kind].TryGetValue(name, out var entry)) return entry.Instance;
        var available = _byName[kind].Count == 0
            ? $"no loaded plugin provides any {kind.Singular}; 'peft plugins' lists what is loaded"
            : $"available {kind.Plural}: {string.Join(", ", _byName[kind].Keys.Order(StringComparer.Ordinal))}";
        throw new PeftConfigurationException(configKey ?? kind.DefaultConfigKey, name, $"unknown {kind.Singular} '{name}' ({available})");
    }

    /// <summary>
    /// The host's catalog: plugins from <c>BASE/plugins/</c> (absent folder: none) and from every folder in
    /// <c>plugins:directories</c> (relative to the current directory; each must exist), with the host's
    /// built-in services (<see cref="BuiltInServices.Register"/>).
    /// </summary>
    public static PluginCatalog LoadForHost(string baseDirectory, IConfiguration configuration)
    {
        var defaultDirectory = Path.Combine(baseDirectory, "plugins");
        var options = PluginsOptions.From(configuration);
        var directories = new List<string> { defaultDirectory };
        for (int i = 0; i < options.Directories.Count; i++)
        {
            var full = Path.GetFullPath(options.Directories[i]);
            if (!Directory.Exists(full))
                throw new PeftConfigurationException($"{PluginsOptions.Section}:directories:{i}", options.Directories[i],
                    $"plugin folder does not exist (looked for '{full}')");
            directories.Add(full);
        }
        return Load(directories, BuiltInServices.Register, optionalDirectories: new[] { defaultDirectory });
    }

    /// <summary>Find the plugins in <paramref name="directories"/> (see <see cref="PluginDiscovery"/>) and load them.</summary>
    /// <param name="registerBuiltIns">Registers the host's own services first (they are named like plugin services and may not clash with them).</param>
    public static PluginCatalog Load(IEnumerable<string> directories, Action<IServiceCollection>? registerBuiltIns = null,
        IEnumerable<string>? optionalDirectories = null) =>
        LoadAssemblies(PluginDiscovery.FindPluginAssemblies(directories, optionalDirectories), registerBuiltIns);

    /// <summary>Load the plugins whose main assemblies are <paramref name="assemblyPaths"/>.</summary>
    public static PluginCatalog LoadAssemblies(IReadOnlyList<string> assemblyPaths, Action<IServiceCollection>? registerBuiltIns = null)
    {
        var services = new ServiceCollection();
        registerBuiltIns?.Invoke(services);
        var registered = services.Where(d => IsIndexed(d.ServiceType)).Select(d => (Descriptor: d, Owner: (LoadedPlugin?)null)).ToList();

        var loaders = new List<PluginLoader>();
        var plugins = new List<LoadedPlugin>();
        ServiceProvider? provider = null;
        try
        {
            foreach (var path in assemblyPaths.Select(Path.GetFullPath))
            {
                var plugin = Instantiate(path, loaders);
                var clash = plugins.FirstOrDefault(p => string.Equals(p.Name, plugin.Name, StringComparison.OrdinalIgnoreCase));
                if (clash is not null)
                    throw new PluginLoadException(new[] { clash.AssemblyPath, path },
                        $"two plugins are named '{plugin.Name}': '{clash.AssemblyPath}' and '{path}' (plugin names must be unique; remove one)");
                foreach (var d in Configure(plugin, services))
                    registered.Add((d, plugin));
                plugins.Add(plugin);
            }

            provider = services.BuildServiceProvider();
            var byName = Kinds.ToDictionary(k => k, _ => new Dictionary<string, Entry>(StringComparer.OrdinalIgnoreCase));
            // the names each owner provides, by kind (owner null: the host)
            var hostNames = Kinds.ToDictionary(k => k, _ => new List<string>());
            var pluginNames = plugins.ToDictionary(p => p, _ => Kinds.ToDictionary(k => k, _ => new List<string>()));
            foreach (var kind in Kinds)
                Index(kind, provider, registered.Where(r => r.Descriptor.ServiceType == kind.ServiceType).ToList(), byName[kind],
                    (owner, name) => (owner is null ? hostNames : pluginNames[owner])[kind].Add(name));

            static ProvidedServices ToProvided(Dictionary<Kind, List<string>> names) =>
                new(names[MethodKind], names[QuantizerKind], names[OptimizerKind], names[HookKind]);
            foreach (var p in plugins) p.Provides = ToProvided(pluginNames[p]);
            return new PluginCatalog(plugins, ToProvided(hostNames), byName, provider, loaders);
        }
        catch
        {
            provider?.Dispose();
            foreach (var l in loaders) l.Dispose();
            throw;
        }
    }

    static bool IsIndexed(Type serviceType) => Kinds.Any(k => k.ServiceType == serviceType);

    /// <summary>Load the assembly in its own context and create its single <see cref="IPeftPlugin"/>.</summary>
    static LoadedPlugin Instantiate(string path, List<PluginLoader> loaders)
    {
        CheckDepsFile(path);
        AbstractionsCompatibility.Check(path);
        Assembly assembly;
        try
        {
            var loader = PluginLoader.CreateFromAssemblyFile(path, SharedTypes, config =>
            {
                config.PreferSharedTypes = true;
                config.DefaultContext = AssemblyLoadContext.GetLoadContext(typeof(PluginCatalog).Assembly) ?? AssemblyLoadContext.Default;
            });
            loaders.Add(loader);
            assembly = loader.LoadDefaultAssembly();
        }
        catch (Exception e)
        {
            throw new PluginLoadException(path, $"cannot load the assembly: {Describe(e)}", e);
        }

        Type[] types;
        try
        {
            types = assembly.GetExportedTypes();
        }
        catch (Exception e)
        {
            throw new PluginLoadException(path, $"cannot read the assembly's types (a dependency is missing or incompatible?): {Describe(e)}", e);
        }
        var entries = types.Where(t => t.IsClass && !t.IsAbstract && typeof(IPeftPlugin).IsAssignableFrom(t)).ToList();
        if (entries.Count == 0)
        {
            var foreign = types.SelectMany(t => t.GetInterfaces().Select(i => (Type: t, Interface: i)))
                .FirstOrDefault(x => x.Interface.FullName == typeof(IPeftPlugin).FullName);
            throw new PluginLoadException(path, foreign.Type is null
                ? $"no public non-abstract class implements {typeof(IPeftPlugin).FullName}"
                : $"{foreign.Type.FullName} implements a different copy of {typeof(IPeftPlugin).FullName} (from '{foreign.Interface.Assembly.Location}'), " +
                  "so its types do not unify with the host's; a plugin must not ship its own Peft.Abstractions.dll");
        }
        if (entries.Count > 1)
            throw new PluginLoadException(path,
                $"several classes implement {typeof(IPeftPlugin).FullName} ({string.Join(", ", entries.Select(t => t.FullName))}); a plugin has exactly one entry point");
        var entryType = entries[0];
        if (entryType.GetConstructor(Type.EmptyTypes) is null)
            throw new PluginLoadException(path, $"{entryType.FullName} has no public parameterless constructor");

        IPeftPlugin instance;
        string name;
        try
        {
            instance = (IPeftPlugin)Activator.CreateInstance(entryType)!;
            name = instance.Name;
        }
        catch (Exception e)
        {
            throw new PluginLoadException(path, $"creating {entryType.FullName} failed: {Describe(e)}", e);
        }
        if (string.IsNullOrWhiteSpace(name))
            throw new PluginLoadException(path, $"{entryType.FullName}.Name is empty");

        var version = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
                      ?? assembly.GetName().Version?.ToString() ?? "unknown";
        return new LoadedPlugin(instance, assembly, path, version);
    }

    /// <summary>
    /// The loader hands <c>X.deps.json</c> to the runtime's native dependency resolver, which aborts the whole
    /// process (an uncatchable C++ exception) when <c>runtimeTarget.name</c> is missing, and prints to stderr
    /// on invalid JSON. So check the file first and report it like any other plugin error.
    /// </summary>
    static void CheckDepsFile(string assemblyPath)
    {
        var depsPath = Path.ChangeExtension(assemblyPath, ".deps.json");
        if (!File.Exists(depsPath))
            throw new PluginLoadException(assemblyPath, $"'{depsPath}' is missing (a plugin folder holds X.dll next to X.deps.json, as dotnet build makes them)");
        string problem;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(depsPath));
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) problem = "the top level is not a JSON object";
            else if (!root.TryGetProperty("runtimeTarget", out var target) || target.ValueKind != JsonValueKind.Object)
                problem = "it has no \"runtimeTarget\" object";
            else if (!target.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(name.GetString()))
                problem = "\"runtimeTarget\" has no \"name\" (e.g. \".NETCoreApp,Version=v10.0\")";
            else if (root.TryGetProperty("targets", out var targets) && targets.ValueKind != JsonValueKind.Object)
                problem = "\"targets\" is not an object";
            else if (root.TryGetProperty("libraries", out var libraries) && libraries.ValueKind != JsonValueKind.Object)
                problem = "\"libraries\" is not an object";
            else return;
        }
        catch (JsonException e)
        {
            problem = $"invalid JSON ({e.Message})";
        }
        catch (IOException e)
        {
            problem = $"cannot be read ({e.Message})";
        }
        throw new PluginLoadException(assemblyPath, $"its dependency file '{depsPath}' is not a valid deps.json: {problem}");
    }

    /// <summary>Call the plugin's ConfigureServices; return the indexed descriptors it added (its provenance).</summary>
    static List<ServiceDescriptor> Configure(LoadedPlugin plugin, IServiceCollection services)
    {
        var before = services.ToArray();
        try
        {
            plugin.Instance.ConfigureServices(services);
        }
        catch (Exception e)
        {
            throw new PluginLoadException(plugin.AssemblyPath, $"ConfigureServices of plugin '{plugin.Name}' failed: {Describe(e)}", e);
        }
        if (services.Count < before.Length || before.Where((d, i) => !ReferenceEquals(services[i], d)).Any())
            throw new PluginLoadException(plugin.AssemblyPath,
                $"ConfigureServices of plugin '{plugin.Name}' removed or replaced services registered before it; a plugin may only add services");
        var added = services.Skip(before.Length).Where(d => IsIndexed(d.ServiceType)).ToList();
        foreach (var d in added.Where(d => d.IsKeyedService))
            throw new PluginLoadException(plugin.AssemblyPath,
                $"registers {d.ServiceType.Name} as a keyed service (key '{d.ServiceKey}'); register it unkeyed — the host finds it by its Name");
        return added;
    }

    /// <summary>Resolve every service of one kind, read its name, and index it; a clash names both owners.</summary>
    static void Index(Kind kind, IServiceProvider provider, List<(ServiceDescriptor Descriptor, LoadedPlugin? Owner)> registered,
        Dictionary<string, Entry> byName, Action<LoadedPlugin?, string> record)
    {
        if (registered.Count == 0) return;
        object?[] instances;
        try
        {
            // In registration order, one per descriptor (Microsoft.Extensions.DependencyInjection guarantees both).
            instances = provider.GetServices(kind.ServiceType).ToArray();
        }
        catch (Exception e)
        {
            throw FindFailingService(kind, provider, registered, e);
        }
        if (instances.Length != registered.Count)
            throw new InvalidOperationException($"{kind.Plural}: {registered.Count} registered but {instances.Length} resolved");

        for (int i = 0; i < instances.Length; i++)
        {
            var owner = registered[i].Owner;
            string name;
            try
            {
                name = instances[i] is { } instance ? kind.NameOf(instance) : throw new InvalidOperationException("the service resolved to null");
            }
            catch (Exception e)
            {
                throw OwnerError(owner, $"its {kind.Singular} {ImplementationName(registered[i].Descriptor)} has no usable Name: {Describe(e)}", e);
            }
            if (string.IsNullOrWhiteSpace(name))
                throw OwnerError(owner, $"its {kind.Singular} {instances[i]!.GetType().FullName} has an empty Name");
            if (byName.TryGetValue(name, out var previous))
            {
                var paths = new[] { OwnerPath(previous.Owner), OwnerPath(owner) };
                throw new PluginLoadException(paths, ReferenceEquals(previous.Owner, owner)
                    ? $"{OwnerText(owner)} registers two {kind.Plural} named '{name}'"
                    : $"{kind.Singular} name '{name}' is registered twice: by {OwnerText(previous.Owner)} and by {OwnerText(owner)} (names must be unique; remove one of the plugins)");
            }
            byName[name] = new Entry(instances[i]!, owner);
            record(owner, name);
        }
    }

    /// <summary>Resolving all services of a kind failed: create them one by one to name the plugin at fault.</summary>
    static Exception FindFailingService(Kind kind, IServiceProvider provider, List<(ServiceDescriptor Descriptor, LoadedPlugin? Owner)> registered, Exception original)
    {
        foreach (var (d, owner) in registered)
        {
            try
            {
                _ = d.ImplementationInstance ?? d.ImplementationFactory?.Invoke(provider) ?? ActivatorUtilities.CreateInstance(provider, d.ImplementationType!);
            }
            catch (Exception e)
            {
                return OwnerError(owner, $"its {kind.Singular} {ImplementationName(d)} could not be created: {Describe(e)}", e);
            }
        }
        return new InvalidOperationException($"resolving the {kind.Plural} failed: {Describe(original)}", original);
    }

    static Exception OwnerError(LoadedPlugin? owner, string reason, Exception? inner = null) =>
        owner is null
            ? new InvalidOperationException($"a built-in service of the host is broken: {reason}", inner)
            : new PluginLoadException(owner.AssemblyPath, reason, inner);

    static string OwnerPath(LoadedPlugin? owner) => owner?.AssemblyPath ?? "(host)";

    static string OwnerText(LoadedPlugin? owner) => owner is null ? "the host (built in)" : $"plugin '{owner.AssemblyPath}'";

    static string ImplementationName(ServiceDescriptor d) =>
        (d.ImplementationType ?? d.ImplementationInstance?.GetType())?.FullName ?? $"(factory for {d.ServiceType.Name})";

    /// <summary>"BadImageFormatException: ..." of the innermost useful exception.</summary>
    static string Describe(Exception e)
    {
        while (e is TargetInvocationException { InnerException: { } inner }) e = inner;
        return $"{e.GetType().Name}: {e.Message}";
    }

    public void Dispose()
    {
        _provider.Dispose();
        foreach (var l in _loaders) l.Dispose();
    }
}
