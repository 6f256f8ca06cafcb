using Peft.Host.Planning;
using static Peft.Tests.Planning.PlanTestKit;

namespace Peft.Tests.Planning;

/// <summary>
/// Every row of the seed's "Decision Matrix Summary" table, through the seed's rules (with the throughput input
/// honoured) and through the planner's budgets for the actual model (batch 1 x 2048, activation checkpointing).
/// </summary>
public sealed class MethodAdvisorTests
{
    static readonly PlanSettings Template = new() { Components = Config(new()), BatchSize = 1, SeqLen = 2048, ActivationCheckpointing = true };

    public static IEnumerable<object[]> Rows() =>
    [
        // scenario, size, GB, GPUs, quality, multi-tenant, throughput, preset, accepted methods
        ["1 GPU (48GB), 70B model", 70.0, 48.0, 1, QualityRequirement.High, false, ThroughputPriority.Medium, "llama2-70b", new[] { "qlora" }],
        ["2 GPUs (80GB), 70B, multi-tenant", 70.0, 80.0, 2, QualityRequirement.High, true, ThroughputPriority.Medium, "llama2-70b", new[] { "lora", "dora" }],
        ["4 GPUs (80GB), 70B, max quality, no adapters", 70.0, 80.0, 4, QualityRequirement.Maximum, false, ThroughputPriority.Medium, "llama2-70b", new[] { "galore", "lisa" }],
        ["16+ GPUs, 70B, max quality", 70.0, 80.0, 16, QualityRequirement.Maximum, false, ThroughputPriority.Medium, "llama2-70b", new[] { "full" }],
        ["1 GPU (24GB), 7B model", 7.0, 24.0, 1, QualityRequirement.Acceptable, false, ThroughputPriority.Medium, "llama2-7b", new[] { "qlora" }],
        ["1 GPU (80GB), 7B model, multi-tenant", 7.0, 80.0, 1, QualityRequirement.High, true, ThroughputPriority.Medium, "llama2-7b", new[] { "lora" }],
        ["8 GPUs (80GB), 70B, fast iteration", 70.0, 80.0, 8, QualityRequirement.Acceptable, false, ThroughputPriority.High, "llama2-70b", new[] { "lora" }],
        ["8 GPUs (80GB), 70B, fast iteration (high quality)", 70.0, 80.0, 8, QualityRequirement.High, false, ThroughputPriority.High, "llama2-70b", new[] { "lora" }],
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Seed_table_rows_hold_by_the_rules_and_by_the_plans(string scenario, double size, double gb, int gpus, QualityRequirement quality,
        bool multiTenant, ThroughputPriority throughput, string preset, string[] accepted)
    {
        var inputs = new AdvisorInputs(size, gb, gpus, quality, multiTenant, throughput);
        MethodAdvisor.RuleOfThumb(inputs).Method.Should().BeOneOf(accepted, scenario);
        var (choice, budgets) = MethodAdvisor.FromPlans(inputs, Preset(preset), Template, PlanTestKit.FormulaComponents);
        choice.Method.Should().BeOneOf(accepted, $"{scenario}: {choice.Reason}");
        // the choice is backed by a plan that fits
        budgets.Should().Contain(b => b.Method == choice.Method && b.Fits);
    }

    [Fact]
    public void The_seeds_own_function_ignores_throughput_and_contradicts_its_last_row()
    {
        // the seed's select_finetuning_method never reads training_throughput_priority: for 8 x 80 GB, 70B, acceptable
        // quality it returns QLoRA (640 >= 35 + 10); its table says LoRA. With the input honoured:
        var fast = new AdvisorInputs(70, 80, 8, QualityRequirement.Acceptable, false, ThroughputPriority.High);
        MethodAdvisor.RuleOfThumb(fast).Method.Should().Be("lora");
        MethodAdvisor.RuleOfThumb(fast with { Throughput = ThroughputPriority.Medium }).Method.Should().Be("qlora");
    }

    [Fact]
    public void Plans_and_rules_can_disagree_and_the_plan_says_why()
    {
        // 1 x 80 GB, 13B, maximum quality: the seed's rule prices GaLore at 2 x 26 + 20 = 72 GB <= 80 -> GaLore.
        // The plan for llama2-13b in mixed precision adds the fp32 master copy (4 B x 13.0e9 = 52 GB) the rule leaves
        // out: GaLore does not fit one 80 GB GPU, LISA k=8 does.
        var inputs = new AdvisorInputs(13, 80, 1, QualityRequirement.Maximum, false, ThroughputPriority.Medium);
        MethodAdvisor.RuleOfThumb(inputs).Method.Should().Be("galore");
        var (choice, budgets) = MethodAdvisor.FromPlans(inputs, Preset("llama2-13b"), Template, PlanTestKit.FormulaComponents);
        var galore = budgets.First(b => b.Method == "galore");
        galore.Fits.Should().BeFalse();
        galore.Plan.Bytes.MasterWeightBytes.Should().Be(4 * Preset("llama2-13b").TotalParameters);
        choice.Method.Should().Be("lisa");
        choice.Reason.Should().Contain("GaLore needs");
    }

    [Fact]
    public void Recommend_prints_the_method_name_first()
    {
        var (code, stdout, stderr) = RunPeft("recommend", "--model-size", "70", "--gpu-memory", "48", "--gpus", "1", "--quality", "high",
            "--multi-tenant", "false", "--throughput", "medium", "--explain");
        code.Should().Be(0, stderr);
        stdout.Split('\n')[0].Should().StartWith("qlora");
        stdout.Should().Contain("budget lora").And.Contain("budget qlora");
    }

    [Theory]
    [InlineData("--gpus", "0")]
    [InlineData("--gpu-memory", "-80")]
    [InlineData("--quality", "best")]
    [InlineData("--model-size", "0")]
    public void Recommend_bad_input_is_one_line_and_exit_code_2(string option, string value)
    {
        var args = new List<string> { "recommend", "--model-size", "7", "--gpu-memory", "24", "--gpus", "1" };
        int at = args.IndexOf(option);
        if (at >= 0) args[at + 1] = value; else args.AddRange([option, value]);
        var (code, stdout, stderr) = RunPeft(args.ToArray());
        code.Should().Be(2);
        stdout.Should().BeEmpty();
        stderr.TrimEnd().Should().NotContain("\n").And.Contain(option).And.Contain(value);
    }
}
