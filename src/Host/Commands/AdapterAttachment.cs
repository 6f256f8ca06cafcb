using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Peft.Abstractions.Methods;
using Peft.Abstractions.Model;
using Peft.Host.Adapters;
using Peft.Host.Cli;
using Peft.Host.Plugins;

namespace Peft.Host.Commands;

/// <summary>
/// <c>--adapter DIR</c> for eval, generate and merge: loads the plugins (the host's plugins/ folder and
/// <c>--plugins</c> / <c>plugins:directories</c>), then the PEFT adapter folder onto the
/// model through whichever loaded method reads its <c>peft_type</c>.
/// </summary>
public static class AdapterAttachment
{
    public const string Help = "  --adapter DIR  an HF PEFT adapter folder (adapter_config.json + adapter_model.safetensors) applied to the model";

    /// <summary>Attach the adapter in <paramref name="adapterDir"/>; the returned catalog must outlive the model's use of the adapter.</summary>
    public static (PluginCatalog Catalog, IAdapter Adapter) Attach(string verb, string adapterDir, IPeftModel model, CliContext context, IConfiguration plugins)
    {
        if (!Directory.Exists(adapterDir)) throw new CliException($"{verb}: option '--adapter': '{adapterDir}' is not a folder");
        var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, plugins);
        try
        {
            return (catalog, AttachWith(catalog, adapterDir, model));
        }
        catch
        {
            catalog.Dispose();
            throw;
        }
    }

    /// <summary>Attach the adapter folder through the methods of an already loaded catalog.</summary>
    public static IAdapter AttachWith(PluginCatalog catalog, string adapterDir, IPeftModel model)
    {
        var methods = catalog.Services.GetServices<IPeftMethod>().ToList();
        var adapter = PeftAdapterFolder.Load(adapterDir, model, methods);
        adapter.Enabled = true;
        return adapter;
    }
}
