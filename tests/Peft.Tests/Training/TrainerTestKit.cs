using Peft.Abstractions.Training;
using Peft.Host.Composition;
using Peft.Host.Data;
using Peft.Host.Optimization;
using Peft.Host.Training;
using TorchSharp.Modules;

namespace Peft.Tests.Training;

/// <summary>Builds small runs of the trainer on <see cref="TinyCausalLm"/> and a character-level text.</summary>
public static class TrainerTestKit
{
    public static readonly CharTokenizer Tokenizer = new();

    /// <summary>Packed character sequences of a repetitive text (easy to learn).</summary>
    public static TrainingDataSet TinyData(int sequences = 12, int seqLen = 16, int validation = 0, bool shuffle = true)
    {
        var text = string.Concat(Enumerable.Repeat("the cat sat on the mat. ", 40));
        var stream = new List<int> { Tokenizer.BosId };
        stream.AddRange(Tokenizer.Encode(text));
        var packed = PlainTextDataset.Pack(stream, seqLen);
        var train = packed.Take(sequences).ToList();
        var held = packed.Skip(sequences).Take(validation).ToList();
        return TrainingDataSet.FromExamples(train, held, Tokenizer.EosId, shuffle, "text");
    }

    public static TrainingOptions Options(Action<TrainingOptions>? change = null)
    {
        var o = new TrainingOptions
        {
            Seed = 5, BatchSize = 4, MaxSteps = 10, LearningRate = 1e-2, LrScheduler = "constant",
            CheckpointEvery = 0, LogEvery = 1, MaxGradNorm = 1.0,
        };
        change?.Invoke(o);
        o.Validate().Should().BeEmpty();
        return o;
    }

    /// <summary>
    /// A run as the composer builds one: the model prepared for training (<see cref="ModelPreparation"/>: base_dtype,
    /// activation_checkpointing), AdamW over <paramref name="trainable"/>.
    /// </summary>
    public static TrainingRun Run(TinyCausalLm model, IReadOnlyList<(string Name, Parameter Parameter)> trainable, TrainingDataSet data,
        TrainingOptions options, string outputDirectory, ITrainingHook? hook = null, bool lossCurve = false)
    {
        ModelPreparation.Apply(model, trainable, options);
        return new()
        {
            Model = model,
            TrainableParameters = trainable,
            Optimizer = new AdamWOptimizer(trainable, options.ToOptimizerSettings()),
            Hooks = hook is null ? [] : [hook],
            Data = data,
            Options = options,
            OutputDirectory = outputDirectory,
            Output = new FullModelOutput(model),
            WriteLossCurve = lossCurve,
        };
    }

    public static TinyCausalLm TinyModel(ulong seed = 7) => new(Tokenizer.VocabSize, seed: seed);

    public static Dictionary<string, float[]> Snapshot(TinyCausalLm model) =>
        model.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter.to_type(TorchSharp.torch.ScalarType.Float32).data<float>().ToArray());
}

/// <summary>A hook that runs a callback at the end of every step.</summary>
public sealed class CallbackHook(Action<TrainingContext>? onStepStart = null, Action<TrainingContext>? onStepEnd = null) : ITrainingHook
{
    public void OnStepStart(TrainingContext context) => onStepStart?.Invoke(context);
    public void OnStepEnd(TrainingContext context) => onStepEnd?.Invoke(context);
}
