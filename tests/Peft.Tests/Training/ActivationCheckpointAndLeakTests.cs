using Peft.Host.Training;
using Peft.Tests.Data;
using TorchSharp;
using static Peft.Tests.Training.TrainerTestKit;
using static TorchSharp.torch;
using Peft.Host.Model;

namespace Peft.Tests.Training;

public class ActivationCheckpointAndLeakTests
{
    static Dictionary<string, float[]> Gradients(bool checkpointing, params string[] trainable)
    {
        var model = TinyModel();
        model.ActivationCheckpointing = checkpointing;
        model.Train(trainable);
        using var scope = torch.NewDisposeScope();
        var batch = Peft.Host.Data.BatchCollator.Collate(TinyData().Train.Take(3).ToList(), 2);
        var (ids, labels) = batch.ToTensors(CPU);
        CausalLmLoss.Sum(model.Logits(ids), labels).backward();
        return model.NamedParameters().Where(p => trainable.Contains(p.Name))
            .ToDictionary(p => p.Name, p => p.Parameter.grad!.data<float>().ToArray());
    }

    [Theory]
    [InlineData("layers.0.up_proj.weight,layers.1.down_proj.weight,lm_head.weight")]   // frozen embedding: layer 0's input needs no grad
    [InlineData("embed_tokens.weight,layers.0.down_proj.weight,layers.1.up_proj.weight")]
    public void Checkpointed_layers_give_the_same_gradients(string names)
    {
        var trainable = names.Split(',');
        var plain = Gradients(false, trainable);
        var recomputed = Gradients(true, trainable);
        recomputed.Keys.Should().BeEquivalentTo(trainable);
        foreach (var name in trainable)
        {
            plain[name].Should().Contain(g => g != 0, $"{name} receives a gradient");
            recomputed[name].Zip(plain[name], (a, b) => Math.Abs(a - b)).Max().Should().BeLessThan(1e-6f, name);
        }
    }

    [Fact]
    public void Checkpointing_in_the_trainer_reproduces_the_losses()
    {
        List<double> Losses(bool checkpointing)
        {
            using var dir = new TempDirectory();
            var model = TinyModel();
            var options = Options(o => { o.MaxSteps = 4; o.ActivationCheckpointing = checkpointing; });
            return Trainer.Run(TrainerTestKit.Run(model, model.Train("layers.0.up_proj.weight", "layers.1.down_proj.weight"), TinyData(), options, dir.Path))
                .Steps.Select(s => s.Loss).ToList();
        }
        Losses(true).Should().Equal(Losses(false));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_training_step_leaves_no_native_tensor_behind(bool checkpointing)
    {
        // Live TorchSharp tensors on this thread after each step (taken at the end of the step). Steps 1-2 warm up
        // (the optimizer creates its moments); from then on every step, evaluation and checkpoint must free all it made.
        using var dir = new TempDirectory();
        var model = TinyModel();
        var live = new List<long>();
        var probe = new CallbackHook(onStepEnd: _ => live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount));
        var options = Options(o =>
        {
            o.MaxSteps = 10; o.GradientAccumulationSteps = 2; o.EvalEvery = 2; o.CheckpointEvery = 3; o.KeepLastCheckpoints = 1;
            o.ActivationCheckpointing = checkpointing;
        });
        Trainer.Run(TrainerTestKit.Run(model, model.Train("layers.0.up_proj.weight", "lm_head.weight"), TinyData(validation: 3), options, dir.Path, probe));
        live.Should().HaveCount(10);
        live.Skip(2).Should().AllBeEquivalentTo(live[2], $"live tensor counts per step were {string.Join(", ", live)}");
    }
}

public class ActivationCheckpointFunctionTests
{
    [Fact]
    public void The_block_runs_again_in_backward_and_gradients_match_plain_autograd()
    {
        int calls = 0;
        var w = new TorchSharp.Modules.Parameter(torch.tensor(new float[] { 0.5f, -1.5f, 2f }));
        Tensor Block(Tensor x) { calls++; return torch.tanh(x * w) * x; }

        using var x = torch.tensor(new float[] { 0.3f, 0.7f, -0.2f }).requires_grad_(true);
        var y = ActivationCheckpoint.Run(Block, x, [w]);
        calls.Should().Be(1);
        y.requires_grad.Should().BeTrue();
        y.sum().backward();
        calls.Should().Be(2, "backward recomputes the block");
        var checkpointedW = w.grad!.data<float>().ToArray();
        var checkpointedX = x.grad!.data<float>().ToArray();

        w.grad = null; x.grad = null;
        Block(x).sum().backward();
        w.grad!.data<float>().ToArray().Should().Equal(checkpointedW);
        x.grad!.data<float>().ToArray().Should().Equal(checkpointedX);

        // d/dw sum(tanh(x w) x) = x² (1 − tanh²(x w)), by hand for the first element
        double x0 = 0.3, w0 = 0.5, t = Math.Tanh(x0 * w0);
        checkpointedW[0].Should().BeApproximately((float)(x0 * x0 * (1 - t * t)), 1e-6f);

        using (torch.no_grad()) { calls = 0; ActivationCheckpoint.Run(Block, x, [w]); calls.Should().Be(1, "without grad mode the block just runs"); }
    }

    [Fact]
    public void Constants_made_in_the_forward_pass_survive_until_backward()
    {
        var w = new TorchSharp.Modules.Parameter(torch.tensor(new float[] { 0.5f, -1.5f }));
        Tensor Block(Tensor x, IReadOnlyList<Tensor> c) => (x * w + c[0]).sin() * c[1];
        using var x = torch.tensor(new float[] { 0.3f, 0.7f });
        Tensor y;
        using (var forwardScope = torch.NewDisposeScope())
        {
            var shift = torch.tensor(new float[] { 0.1f, 0.2f });
            var scale = torch.tensor(new float[] { 2f, 3f });
            y = ActivationCheckpoint.Run(Block, x, [shift, scale], [w]).MoveToOuterDisposeScope();
        }   // shift and scale handles are disposed here, as a model's forward scope would do
        y.sum().backward();
        var expected = new[] { 2 * 0.3 * Math.Cos(0.3 * 0.5 + 0.1), 3 * 0.7 * Math.Cos(0.7 * -1.5 + 0.2) };
        w.grad!.data<float>().ToArray().Select(v => (double)v).Should().BeEquivalentTo(expected, o => o.Using<double>(c => c.Subject.Should().BeApproximately(c.Expectation, 1e-6)).WhenTypeIs<double>());
        y.Dispose();
    }
}
