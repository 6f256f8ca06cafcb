using Peft.Abstractions;
using Peft.Host.Tokenization;

namespace Peft.Host.Data;

/// <summary>
/// The tokenized training and evaluation examples of a run, built from the <c>data</c> section. The held-out
/// split (data:validation_fraction) is a seeded choice of examples: the same seed always holds out the same ones.
/// </summary>
public sealed class TrainingDataSet
{
    public required IReadOnlyList<TokenizedExample> Train { get; init; }
    public required IReadOnlyList<TokenizedExample> Validation { get; init; }

    /// <summary>"instruction" or "text".</summary>
    public required string Format { get; init; }

    /// <summary>Token id used to pad input ids (labels are padded with -100, so its value never matters to the loss).</summary>
    public required int PadId { get; init; }

    /// <summary>Visit the training examples in a new seeded order each epoch (data:shuffle).</summary>
    public bool ShuffleTrain { get; init; } = true;

    /// <summary>One line describing what was read, for the run's log.</summary>
    public string Description { get; init; } = "";

    /// <summary>Examples given directly (tests, other front ends).</summary>
    public static TrainingDataSet FromExamples(IReadOnlyList<TokenizedExample> train, IReadOnlyList<TokenizedExample>? validation, int padId, bool shuffle = true, string format = "instruction")
    {
        if (train.Count == 0) throw new ArgumentException("no training examples", nameof(train));
        var bad = train.Concat(validation ?? []).FirstOrDefault(e => e.InputIds.Length != e.Labels.Length || e.CountedTokens == 0);
        if (bad is not null) throw new ArgumentException("every example needs as many labels as ids and at least one counted label after position 0");
        return new TrainingDataSet { Train = train, Validation = validation ?? [], Format = format, PadId = padId, ShuffleTrain = shuffle };
    }

    /// <summary>Load and tokenize <c>data:path</c> (and <c>data:validation_path</c>), then hold out the validation share.</summary>
    public static TrainingDataSet Load(DataOptions options, ITextTokenizer tokenizer, int seed)
    {
        var path = options.Path ?? throw new PeftConfigurationException("data:path", null, "is required");
        if (!File.Exists(path)) throw new PeftConfigurationException("data:path", path, "file not found");
        var format = options.ResolveFormat(path);
        var (all, description) = LoadFile(path, format, tokenizer, options);

        IReadOnlyList<TokenizedExample> train = all, validation = [];
        if (options.ValidationPath is { } validationPath)
        {
            if (!File.Exists(validationPath)) throw new PeftConfigurationException("data:validation_path", validationPath, "file not found");
            var (v, vDescription) = LoadFile(validationPath, format, tokenizer, options);
            validation = v;
            description += $"; validation: {vDescription}";
        }
        else if (options.ValidationFraction > 0)
        {
            int held = Math.Max(1, (int)Math.Round(all.Count * options.ValidationFraction, MidpointRounding.AwayFromZero));
            if (held >= all.Count)
                throw new PeftConfigurationException("data:validation_fraction", options.ValidationFraction.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    $"holds out {held} of the {all.Count} examples and leaves none to train on");
            var order = DataOrder.SplitPermutation(all.Count, seed);
            var heldOut = order.Take(held).ToHashSet();
            train = Enumerable.Range(0, all.Count).Where(i => !heldOut.Contains(i)).Select(i => all[i]).ToList();
            validation = Enumerable.Range(0, all.Count).Where(heldOut.Contains).Select(i => all[i]).ToList();
            description += $"; {held} held out for evaluation";
        }
        return new TrainingDataSet { Train = train, Validation = validation, Format = format, PadId = tokenizer.EosId, ShuffleTrain = options.Shuffle, Description = description };
    }

    static (IReadOnlyList<TokenizedExample> Examples, string Description) LoadFile(string path, string format, ITextTokenizer tokenizer, DataOptions options)
    {
        if (format == "chat")
        {
            var template = Data.ChatTemplate.Resolve(options.ChatTemplate, tokenizer, "data:chat_template");
            var c = ChatDataset.Load(path, tokenizer, template, options.SeqLen, options.MaxRows);
            var droppedChats = c.DroppedRows > 0 ? $", {c.DroppedRows} dropped (no assistant token within seq_len {options.SeqLen})" : "";
            return (c.Examples, $"{path}: {c.Rows} conversations ({template.Name} template){droppedChats}");
        }
        if (format == "instruction")
        {
            var r = InstructionDataset.Load(path, tokenizer, options.SeqLen, options.MaxRows);
            var dropped = r.DroppedRows > 0 ? $", {r.DroppedRows} dropped (no response token within seq_len {options.SeqLen})" : "";
            return (r.Examples, $"{path}: {r.Rows} instruction rows{dropped}");
        }
        var t = PlainTextDataset.Load(path, tokenizer, options.SeqLen, options.MaxRows);
        return (t.Examples, $"{path}: {t.Documents} documents, {t.Tokens} tokens packed into {t.Examples.Count} sequences of {options.SeqLen}");
    }
}
