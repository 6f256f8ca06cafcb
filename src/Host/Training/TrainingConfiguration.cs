using Microsoft.Extensions.Configuration;
using Peft.Abstractions.Configuration;
using Peft.Host.Data;

namespace Peft.Host.Training;

/// <summary>The host's own sections of a training configuration (<c>data</c>, <c>training</c>, <c>output</c>), bound strictly.</summary>
public sealed record TrainingConfiguration(DataOptions Data, TrainingOptions Training, OutputOptions Output)
{
    public const string DataSection = "data";
    public const string TrainingSection = "training";
    public const string OutputSection = "output";

    /// <summary>Bind the three sections of <paramref name="root"/>; an unknown key or a bad value throws naming it.</summary>
    public static TrainingConfiguration Bind(IConfiguration root) => new(
        OptionsBinding.Bind<DataOptions>(root.GetSection(DataSection)),
        OptionsBinding.Bind<TrainingOptions>(root.GetSection(TrainingSection)),
        OptionsBinding.Bind<OutputOptions>(root.GetSection(OutputSection)));
}
