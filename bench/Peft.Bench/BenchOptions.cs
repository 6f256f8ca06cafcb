using System.Globalization;

namespace Peft.Bench;

/// <summary>A bad command line: the message names the flag and its value; the bench exits with code 2.</summary>
public sealed class BenchUsageException(string message) : Exception(message);

/// <summary>
/// The bench's flags. The parent takes all of them; a child (<c>--one VARIANT</c>) receives the measurement flags
/// from its parent so every child of a run measures the same workload.
/// </summary>
public sealed class BenchOptions
{
    public const int ExitUsage = 2;

    public int Rounds { get; private set; } = 3;
    public IReadOnlyList<Variant> Variants { get; private set; } = Variant.Defaults;
    public int BatchSize { get; private set; } = 4;
    public int SeqLen { get; private set; } = 256;
    public int WarmupSteps { get; private set; } = 2;
    public int Steps { get; private set; } = 6;
    public int Threads { get; private set; } = 2;
    public int Seed { get; private set; } = 1234;
    public string? Out { get; private set; }

    /// <summary>training:loss_chunk_tokens of every framework child (null: the trainer's default; 0: full logits).</summary>
    public int? LossChunkTokens { get; private set; }

    /// <summary>Set in a child: the one variant it measures.</summary>
    public Variant? One { get; private set; }

    public bool Help { get; private set; }

    /// <summary>Parent: run the vocabulary-scaling memory bench (<see cref="VocabScaling"/>) instead of the variants.</summary>
    public bool VocabScaling { get; private set; }

    /// <summary>Set in a vocabulary-scaling child: (sequence length, loss chunk tokens).</summary>
    public (int Seq, int Chunk)? VocabChild { get; private set; }

    /// <summary>Parent: time a LoRA step on the vocabulary bench's shape with the frozen base in fp32 vs bf16 (<see cref="BaseDtypeSpeed"/>).</summary>
    public bool BaseDtypeSpeed { get; private set; }

    /// <summary>Set in a base-dtype child (with <see cref="VocabChild"/>): the frozen base's storage, float32 or bfloat16.</summary>
    public string? BaseDtypeChild { get; private set; }

    /// <summary>Parent: after the rounds, run one diagnostic child per variant that times each phase of a step. Child: be that diagnostic.</summary>
    public bool Breakdown { get; private set; }

    /// <summary>Measure QLoRA's NF4 dequantization throughput beside an fp32 copy instead of training (<see cref="DequantThroughput"/>).</summary>
    public bool Dequant { get; private set; }

    public const string Usage =
        "usage: Peft.Bench [--rounds N] [--variants LIST] [--batch-size B] [--seq-len T] [--warmup-steps W]\n" +
        "                  [--steps S] [--threads N] [--seed N] [--breakdown] [--dequant] [--out FILE.md]\n\n" +
        "Trains a randomly initialised Llama of stories15M's shape on random tokens with each variant, each run in a\n" +
        "fresh child process, alternating variants round by round; prints medians and LoRA/full ratios.\n\n" +
        "  --rounds N          rounds; each round runs every variant once (default 3)\n" +
        "  --variants LIST     comma-separated, in run order (default full,lora,full-ac,lora-ac); known: {VARIANTS}\n" +
        "  --batch-size B      sequences per step (default 6)\n" +
        "  --seq-len T         tokens per sequence, at most 256 (default 256)\n" +
        "  --warmup-steps W    untimed optimizer steps first (default 2)\n" +
        "  --steps S           timed optimizer steps after the warm-up (default 6)\n" +
        "  --threads N         torch.set_num_threads in every child (default 2)\n" +
        "  --loss-chunk-tokens N  training:loss_chunk_tokens in every child (default: the trainer's, 256; 0 = full logits)\n" +
        "  --seed N            seed of the weights, the adapter and the random tokens (default 1234)\n" +
        "  --breakdown         also time each phase of a step (batch, forward, loss, backward, free, clip, optimizer) in one extra child per variant per round\n" +
        "  --dequant           instead of training: NF4 dequantization GB/s (QLoRA plugin's CPU kernel) beside an fp32 copy of the same size\n" +
        "  --vocab-scaling     instead: peak memory of a LoRA step with vocab 128,256 at seq 256..2048, chunked loss vs full logits\n" +
        "  --base-dtype-speed  instead: LoRA step time and peak memory with vocab 128,256, frozen base fp32 vs bf16 (alternating children)\n" +
        "                      (with --out FILE.md also FILE.png)\n" +
        "  --out FILE.md       also write the report (table, command, machine, date) to this markdown file\n" +
        "  --one VARIANT       (internal) measure one variant in this process and print one JSON line";

    public static string UsageText => Usage.Replace("{VARIANTS}", string.Join(", ", Variant.All.Select(v => v.Name)));

    public static BenchOptions Parse(IReadOnlyList<string> args)
    {
        var o = new BenchOptions();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Count; i++)
        {
            string flag = args[i];
            if (flag is "--help" or "-h") { o.Help = true; continue; }
            if (flag == "--dequant") { if (o.Dequant) throw new BenchUsageException("--dequant is given twice"); o.Dequant = true; continue; }
            if (flag == "--base-dtype-speed") { if (o.BaseDtypeSpeed) throw new BenchUsageException("--base-dtype-speed is given twice"); o.BaseDtypeSpeed = true; continue; }
            if (flag == "--vocab-scaling") { if (o.VocabScaling) throw new BenchUsageException("--vocab-scaling is given twice"); o.VocabScaling = true; continue; }
            if (flag == "--breakdown") { if (o.Breakdown) throw new BenchUsageException("--breakdown is given twice"); o.Breakdown = true; continue; }
            if (!flag.StartsWith("--", StringComparison.Ordinal))
                throw new BenchUsageException($"unexpected argument '{flag}' (flags start with --; see --help)");
            if (!seen.Add(flag)) throw new BenchUsageException($"{flag} is given twice");
            string Value()
            {
                if (i + 1 >= args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal))
                    throw new BenchUsageException($"{flag} needs a value");
                return args[++i];
            }
            int Int(int min, int max)
            {
                var text = Value();
                if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
                    throw new BenchUsageException($"{flag} has value '{text}': not an integer");
                if (v < min || v > max)
                    throw new BenchUsageException($"{flag} has value '{text}': must be between {min} and {max}");
                return v;
            }
            switch (flag)
            {
                case "--rounds": o.Rounds = Int(1, 100); break;
                case "--batch-size": o.BatchSize = Int(1, 1024); break;
                case "--seq-len": o.SeqLen = Int(2, Workload.MaxPositions); break;
                case "--warmup-steps": o.WarmupSteps = Int(1, 10_000); break;
                case "--steps": o.Steps = Int(1, 100_000); break;
                case "--threads": o.Threads = Int(1, 1024); break;
                case "--seed": o.Seed = Int(0, int.MaxValue); break;
                case "--loss-chunk-tokens": o.LossChunkTokens = Int(0, 1 << 20); break;
                case "--out":
                    var path = Value();
                    if (string.IsNullOrWhiteSpace(path)) throw new BenchUsageException("--out needs a file name");
                    o.Out = path;
                    break;
                case "--variants":
                    var text = Value();
                    var names = text.Split(',', StringSplitOptions.TrimEntries);
                    var list = new List<Variant>();
                    foreach (var name in names)
                    {
                        var v = Variant.Find(name) ?? throw new BenchUsageException(
                            $"--variants has value '{text}': unknown variant '{name}' (known: {string.Join(", ", Variant.All.Select(x => x.Name))})");
                        if (list.Contains(v)) throw new BenchUsageException($"--variants has value '{text}': '{name}' is listed twice");
                        list.Add(v);
                    }
                    o.Variants = list;
                    break;
                case "--vocab-child":
                    var pair = Value();
                    var parts = pair.Split(',');
                    if (parts.Length != 2 || !int.TryParse(parts[0], CultureInfo.InvariantCulture, out int vs) || !int.TryParse(parts[1], CultureInfo.InvariantCulture, out int vc) || vs < 2 || vs > 2048 || vc < 0)
                        throw new BenchUsageException($"--vocab-child has value '{pair}': expected SEQ,CHUNK (SEQ 2..2048, CHUNK >= 0)");
                    o.VocabChild = (vs, vc);
                    break;
                case "--base-dtype-child":
                    var bd = Value();
                    o.BaseDtypeChild = bd is "float32" or "bfloat16" ? bd : throw new BenchUsageException($"--base-dtype-child has value '{bd}': expected float32 or bfloat16");
                    break;
                case "--one":
                    var one = Value();
                    o.One = Variant.Find(one) ?? throw new BenchUsageException(
                        $"--one has value '{one}': unknown variant (known: {string.Join(", ", Variant.All.Select(x => x.Name))})");
                    break;
                default:
                    throw new BenchUsageException($"unknown flag '{flag}' (see --help)");
            }
        }
        if (o.One is not null && (o.Out is not null || seen.Contains("--rounds") || seen.Contains("--variants")))
            throw new BenchUsageException("--one measures a single variant in this process; it takes no --rounds, --variants or --out");
        return o;
    }

    /// <summary>The measurement flags a child gets, so it runs the parent's workload.</summary>
    public IEnumerable<string> ChildArguments(Variant variant, bool breakdown = false) =>
    [
        .. (breakdown ? new[] { "--breakdown" } : []),
        "--one", variant.Name,
        "--batch-size", Str(BatchSize), "--seq-len", Str(SeqLen),
        "--warmup-steps", Str(WarmupSteps), "--steps", Str(Steps),
        "--threads", Str(Threads), "--seed", Str(Seed),
        .. (LossChunkTokens is { } c ? new[] { "--loss-chunk-tokens", Str(c) } : []),
    ];

    static string Str(int v) => v.ToString(CultureInfo.InvariantCulture);
}
