using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;
using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Tests.Training;

namespace Peft.Tests.Data;

public class TextAndBatchingTests
{
    readonly CharTokenizer _tok = new();

    [Fact]
    public void Documents_split_on_blank_lines_and_pack_into_seq_len()
    {
        PlainTextDataset.SplitDocuments("ab\ncd\n\n  \n\nef\r\n\r\ng\n").Should().Equal("ab\ncd", "ef", "g");

        using var dir = new TempDirectory();
        var path = dir.File("t.txt", "ab\n\ncde\n");
        var loaded = PlainTextDataset.Load(path, _tok, seqLen: 3);
        int a = 4, b = 5, c = 6, d = 7, e = 8;
        // stream: BOS a b EOS BOS c d e EOS  (9 tokens) → [BOS a b] [EOS BOS c] [d e EOS]
        loaded.Tokens.Should().Be(9);
        loaded.Examples.Select(x => x.InputIds).Should().BeEquivalentTo(new[] { new[] { 1, a, b }, new[] { 2, 1, c }, new[] { d, e, 2 } }, o => o.WithStrictOrdering());
        loaded.Examples.Should().OnlyContain(x => x.Labels.SequenceEqual(x.InputIds));

        var remainder = PlainTextDataset.Pack([1, 2, 3, 4, 5], 2);
        remainder.Select(x => x.Length).Should().Equal(2, 2);   // a final single token cannot be trained on
        PlainTextDataset.Pack([1, 2, 3, 4, 5, 6, 7], 3).Select(x => x.Length).Should().Equal(3, 3);
        PlainTextDataset.Pack([1, 2, 3, 4, 5, 6, 7, 8], 3).Select(x => x.Length).Should().Equal(3, 3, 2);

        var empty = dir.File("empty.txt", "\n \n");
        var act = () => PlainTextDataset.Load(empty, _tok, 8);
        act.Should().Throw<PeftFormatException>().WithMessage($"{empty}: no text*");
    }

    [Fact]
    public void The_vendored_tinystories_text_loads_and_packs()
    {
        var file = TestData.Repo("tinystories/tinystories_train_head.txt");
        var loaded = PlainTextDataset.Load(file, _tok, seqLen: 128, maxDocuments: 20);
        loaded.Documents.Should().Be(20);
        loaded.Examples.Should().OnlyContain(e => e.Length <= 128 && e.Length >= 2);
        loaded.Examples.Sum(e => e.Length).Should().Be((int)loaded.Tokens);
        loaded.Examples[0].InputIds[0].Should().Be(_tok.BosId);
        loaded.Examples.SelectMany(e => e.InputIds).Count(id => id == _tok.EosId).Should().Be(20, "one EOS closes each document");
    }

    [Fact]
    public void Held_out_split_is_deterministic_from_the_seed()
    {
        using var dir = new TempDirectory();
        var path = dir.File("t.txt", string.Join("\n\n", Enumerable.Range(0, 40).Select(i => $"document {i}")));
        var options = new DataOptions { Path = path, SeqLen = 4, ValidationFraction = 0.25 };
        static List<string> Ids(IEnumerable<TokenizedExample> xs) => xs.Select(e => string.Join(",", e.InputIds)).ToList();
        var a = TrainingDataSet.Load(options, _tok, seed: 1);
        var again = TrainingDataSet.Load(options, _tok, seed: 1);
        var other = TrainingDataSet.Load(options, _tok, seed: 2);
        int total = a.Train.Count + a.Validation.Count;
        a.Validation.Should().HaveCount((int)Math.Round(total * 0.25, MidpointRounding.AwayFromZero));
        Ids(a.Validation).Should().Equal(Ids(again.Validation));
        Ids(a.Validation).Should().NotEqual(Ids(other.Validation));
        var everything = TrainingDataSet.Load(new DataOptions { Path = path, SeqLen = 4 }, _tok, 1).Train;
        everything.Should().HaveCount(total);
        Ids(a.Train.Concat(a.Validation)).Should().BeEquivalentTo(Ids(everything));
        a.Train.Intersect(a.Validation).Should().BeEmpty();
        a.Format.Should().Be("text");
    }

    [Fact]
    public void Sampler_visits_every_example_once_per_epoch_in_a_seeded_order_and_resumes_from_its_position()
    {
        var sampler = new EpochSampler(10, 4, seed: 3, shuffle: true);
        sampler.BatchesPerEpoch.Should().Be(3);
        var epoch0 = new[] { sampler.NextBatch(), sampler.NextBatch(), sampler.NextBatch() };
        epoch0.Select(b => b.Length).Should().Equal(4, 4, 2);
        sampler.Position.Should().Be(new DataPosition(1, 0));
        epoch0.SelectMany(b => b).Should().BeEquivalentTo(Enumerable.Range(0, 10));
        var first = sampler.NextBatch();
        var position = sampler.Position;
        var rest = Enumerable.Range(0, 5).Select(_ => sampler.NextBatch()).ToList();

        var epoch1 = first.Concat(rest[0]).Concat(rest[1]).ToArray();
        epoch1.Should().BeEquivalentTo(Enumerable.Range(0, 10));
        epoch1.Should().NotEqual(epoch0.SelectMany(b => b), "each epoch has its own order");

        var resumed = new EpochSampler(10, 4, seed: 3, shuffle: true, position);
        Enumerable.Range(0, 5).Select(_ => resumed.NextBatch()).Should().BeEquivalentTo(rest, o => o.WithStrictOrdering());
        new EpochSampler(10, 4, seed: 3, shuffle: false).NextBatch().Should().Equal(0, 1, 2, 3);
    }

    [Fact]
    public void Collation_right_pads_ids_with_the_pad_id_and_labels_with_minus_100()
    {
        var batch = BatchCollator.Collate([new TokenizedExample([1, 5, 6], [-100, 5, 6]), new TokenizedExample([1, 7], [-100, 7])], padId: 2);
        batch.BatchSize.Should().Be(2);
        batch.SequenceLength.Should().Be(3);
        batch.InputIds.Should().Equal(1, 5, 6, 1, 7, 2);
        batch.Labels.Should().Equal(-100, 5, 6, -100, 7, -100);
        batch.CountedTokens.Should().Be(3);
        batch.RealTokens.Should().Be(5);
    }

    [Fact]
    public void Options_bind_with_defaults_and_bad_values_name_key_and_value()
    {
        IConfiguration Section(params (string Key, string Value)[] pairs) =>
            new ConfigurationBuilder().AddInMemoryCollection(pairs.ToDictionary(p => "data:" + p.Key, p => (string?)p.Value)).Build().GetSection("data");

        var options = OptionsBinding.Bind<DataOptions>(Section(("path", "a.jsonl")));
        options.SeqLen.Should().Be(512);
        options.Shuffle.Should().BeTrue();
        options.ResolveFormat("a.jsonl").Should().Be("instruction");
        options.ResolveFormat("b.txt").Should().Be("text");
        var unknownExtension = () => options.ResolveFormat("c.csv");
        unknownExtension.Should().Throw<PeftConfigurationException>().WithMessage("*data:format*.csv*");

        var cases = new (Action Bind, string Message)[]
        {
            (() => OptionsBinding.Bind<DataOptions>(Section(("path", "a"), ("seq_len", "1"))), "*'data:seq_len' has value '1'*"),
            (() => OptionsBinding.Bind<DataOptions>(Section(("path", "a"), ("format", "csv"))), "*'data:format' has value 'csv'*instruction*"),
            (() => OptionsBinding.Bind<DataOptions>(Section(("path", "a"), ("validation_fraction", "1.5"))), "*'data:validation_fraction' has value '1.5'*"),
            (() => OptionsBinding.Bind<DataOptions>(Section(("path", "a"), ("seqlen", "5"))), "*'data:seqlen'*unknown key*"),
            (() => OptionsBinding.Bind<DataOptions>(Section(("format", "text"))), "*'data:path'*required*"),
            (() => OptionsBinding.Bind<DataOptions>(Section(("path", "a"), ("max_rows", "0"))), "*'data:max_rows' has value '0'*"),
        };
        foreach (var (bind, message) in cases) bind.Should().Throw<PeftConfigurationException>().WithMessage(message);

        var missing = () => TrainingDataSet.Load(new DataOptions { Path = "/nonexistent/x.jsonl" }, _tok, 1);
        missing.Should().Throw<PeftConfigurationException>().WithMessage("*'data:path' has value '/nonexistent/x.jsonl': file not found*");
    }
}
