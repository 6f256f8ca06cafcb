using Microsoft.Extensions.Configuration;
using Peft.Host.Cli;
using Peft.Host.Commands;
using Peft.Host.Planning;

namespace Peft.Tests.Planning;

static class PlanTestKit
{
    public static PlanModel Preset(string name) => ModelPresets.Find(name)!;

    /// <summary>
    /// The planner's formulas for methods and quantizers; optimizer strategies and hooks from the loaded plugins (GaLore
    /// and LISA plan themselves: the host has no formula for them).
    /// </summary>
    public static IPlanComponentSource FormulaComponents => Formulas.Value;

    static readonly Lazy<IPlanComponentSource> Formulas = new(() =>
        new StrategiesAndHooksOf(new CatalogComponents(Peft.Host.Plugins.PluginCatalog.LoadForHost(AppContext.BaseDirectory, new ConfigurationBuilder().Build()))));

    sealed class StrategiesAndHooksOf(IPlanComponentSource plugins) : IPlanComponentSource
    {
        public Abstractions.Methods.IPeftMethod? Method(string name) => null;
        public Abstractions.Quantization.IQuantizer? Quantizer(string name) => null;
        public Abstractions.Optimization.IOptimizerStrategy? OptimizerStrategy(string name) => plugins.OptimizerStrategy(name);
        public Abstractions.Training.ITrainingHookFactory? Hook(string name) => plugins.Hook(name);
    }

    /// <summary>A plan from the planner's formulas and the GaLore/LISA plugins (<see cref="FormulaComponents"/>), mixed precision, no activations unless asked.</summary>
    public static MemoryPlan Plan(string model, string method, MethodKnobs? knobs = null, Func<PlanSettings, PlanSettings>? change = null, IPlanComponentSource? components = null)
    {
        var settings = new PlanSettings { Components = PlanShorthand.Components(method, knobs ?? new MethodKnobs()), Label = method, BatchSize = 0 };
        if (change is not null) settings = change(settings);
        return MemoryPlanner.Plan(Preset(model), settings, components ?? FormulaComponents);
    }

    public static IConfiguration Config(Dictionary<string, string?> keys) => new ConfigurationBuilder().AddInMemoryCollection(keys).Build();

    public static (int Code, string Out, string Err) RunPeft(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CommandLine.Run(args, new CliContext(stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    public static readonly string[] Attention = ["q_proj", "k_proj", "v_proj", "o_proj"];
}
