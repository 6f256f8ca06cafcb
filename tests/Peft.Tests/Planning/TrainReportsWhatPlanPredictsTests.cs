using System.Text.Json.Nodes;
using Peft.Tests.Import;
using Peft.Tests.Reliability;
using Xunit.Abstractions;

namespace Peft.Tests.Planning;

/// <summary>
/// Issue 13 item 5 through the real CLI: <c>peft train</c> reports what it holds (training_summary.json's
/// <c>held_memory</c>, and its last lines), and <c>peft plan --config</c> on the same JSON file predicts it. For
/// stories260K with each method, weights, quantization state, gradients and optimizer state are equal to the byte;
/// activations (the C-heap bytes the last step's forward pass left alive) within the planner's stated 25%.
/// </summary>
[Collection(Stories260KCollection.Name)]
public sealed class TrainReportsWhatPlanPredictsTests(Stories260KFixture fx, ITestOutputHelper output)
{
    public static IEnumerable<object[]> Methods() =>
    [
        ["lora", """ "method": { "name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"] }, """],
        ["dora", """ "method": { "name": "dora", "r": 4, "target_modules": ["q_proj", "v_proj"] }, """],
        ["qlora", """ "quantization": { "name": "nf4" }, "method": { "name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"] }, """],
        ["galore", """ "optimizer": { "name": "galore", "rank": 8 }, """],
        ["lisa", """ "hooks": [ { "name": "lisa", "k": 2 } ], """],
        ["full", """ "method": { "name": "full" }, """],
    ];

    [Theory]
    [MemberData(nameof(Methods))]
    public void Plan_with_the_training_config_predicts_what_train_reports_holding(string method, string components)
    {
        var work = fx.NewDir("plan-vs-train-" + method);
        Directory.CreateDirectory(work);
        var config = Path.Combine(work, "run.json");
        File.WriteAllText(config, $$"""
        {
          "model": { "path": {{JsonValue.Create(fx.ModelDir).ToJsonString()}} },
          {{components}}
          "data": { "path": {{JsonValue.Create(TestData.Repo("tinystories/tinystories_train_head.txt")).ToJsonString()}},
                    "format": "text", "seq_len": 256, "validation_fraction": 0 },
          "training": { "seed": 3, "batch_size": 8, "max_steps": 2, "learning_rate": 0.001, "eval_every": 0,
                        "checkpoint_every": 0, "log_every": 1, "num_threads": 1 },
          "output": { "dir": "out" }
        }
        """);
        var train = PeftProcess.Run(work, "train", "--config", config);
        train.Code.Should().Be(0, train.ToString());
        train.Out.Should().MatchRegex(@"memory held: weights .* frozen \+ .* trainable .*\| gradients .*\| optimizer state .*peak process memory .* \(VmHWM\)");
        var held = JsonNode.Parse(File.ReadAllText(Path.Combine(work, "out", "training_summary.json")))!["held_memory"]!;

        var planRun = PeftProcess.Run(work, "plan", "--config", config, "--json");
        planRun.Code.Should().Be(0, planRun.ToString());
        var plan = JsonNode.Parse(planRun.Out)!;
        long P(string key) => plan[key]?.GetValue<long>() ?? 0;
        long H(string key) => held[key]!.GetValue<long>();

        long codes = P("quantized_base_code_bytes");
        H("frozen_weight_bytes").Should().Be(P("base_weight_bytes") - codes, "frozen weights");
        H("quantization_state_bytes").Should().Be(codes + P("quantization_statistics_bytes"), "quantized codes + statistics");
        H("trainable_weight_bytes").Should().Be(P("trainable_weight_bytes"), "trainable weights");
        H("gradient_bytes").Should().Be(P("gradient_bytes"), "gradients held after backward");
        H("optimizer_state_bytes").Should().Be(P("optimizer_state_bytes") + P("projection_bytes"), "an optimizer's state includes GaLore's projectors");
        if (method == "qlora") H("quantization_state_bytes").Should().BeGreaterThan(0);
        else H("quantization_state_bytes").Should().Be(0);

        long activations = H("activation_bytes"), planned = P("activation_bytes");
        output.WriteLine($"{method}: planned activations {planned:N0} B, train measured {activations:N0} B ({100.0 * (activations - planned) / planned:+0.0;-0.0}%), peak process {H("peak_process_bytes"):N0} B");
        ((double)activations).Should().BeApproximately(planned, PlanAgainstTrainingTests.ActivationTolerance * planned);
        H("peak_process_bytes").Should().BeGreaterThan(H("frozen_weight_bytes") + H("trainable_weight_bytes") + H("quantization_state_bytes") + H("optimizer_state_bytes") + activations,
            "the resident high-water mark holds at least the weights, state and one step's activations");
    }
}
