using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Peft.Abstractions;
using Peft.Abstractions.Training;
using Peft.Host.Data;
using Peft.Host.Formats;
using Peft.Host.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Peft.Host.Training;

/// <summary>
/// The training loop every method plugs into. One optimizer step s (0-based; logs, checkpoints and metrics
/// number it s + 1):
/// <code>
///   hooks.OnStepStart(s)                          LISA picks the layers that train
///   lr = base_lr · schedule(s)                    HF get_*_schedule_with_warmup
///   N  = counted label tokens of the step's gradient_accumulation_steps micro-batches
///   for each micro-batch b:  (Σ_b CE(logits, shifted labels) / N).backward()     token-weighted mean
///   stop if the loss is not finite; clip the global gradient norm to max_grad_norm
///   optimizer.Step(lr); optimizer.ZeroGrad(); hooks.OnStepEnd(s)
/// </code>
/// then logging, evaluation and checkpoints at their intervals. Every step runs in dispose scopes, so no
/// native tensor outlives it. A run resumed from a checkpoint continues bit-identically on the CPU: weights,
/// optimizer state, schedule position, torch's generator state and the data position are all restored, and the
/// data order of an epoch is a pure function of (seed, epoch).
/// </summary>
public static class Trainer
{
    public static TrainingResult Run(TrainingRun run, CancellationToken cancellation = default)
    {
        var o = run.Options;
        var model = run.Model;
        var trainable = run.TrainableParameters;
        if (trainable.Count == 0) throw new TrainingException("there is nothing to train: the trainable parameter list is empty");
        var duplicate = trainable.GroupBy(p => p.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null) throw new TrainingException($"trainable parameter '{duplicate.Key}' is listed twice");
        if (run.Data.Train.Count == 0) throw new TrainingException("there are no training examples");
        int longest = run.Data.Train.Concat(run.Data.Validation).Max(e => e.Length);
        if (longest > model.Shape.MaxPositionEmbeddings)
            throw new PeftConfigurationException("data:seq_len", longest.ToString(CultureInfo.InvariantCulture),
                $"sequences of {longest} tokens are longer than the model's max_position_embeddings ({model.Shape.MaxPositionEmbeddings})");
        Directory.CreateDirectory(run.OutputDirectory);
        var parallel = run.Parallel;   // data parallelism: see Distributed.DataParallelism (a single process: no-ops)
        parallel.CheckBatchSize(o.BatchSize);

        int microPerEpoch = (run.Data.Train.Count + o.BatchSize - 1) / o.BatchSize;
        int totalSteps = o.MaxSteps > 0
            ? o.MaxSteps
            : Math.Max(1, (int)Math.Ceiling(o.Epochs * microPerEpoch / o.GradientAccumulationSteps - 1e-9));
        var schedule = new LearningRateSchedule(o.LrScheduler, o.LearningRate, o.WarmupSteps, totalSteps);

        using (torch.random.manual_seed(o.Seed)) { }
        int step = 0;
        var position = new DataPosition(0, 0);
        double elapsedBefore = 0;
        if (o.Resume is { } resume)
        {
            var directory = CheckpointStore.Resolve(resume, run.OutputDirectory);
            var state = Restore(run, directory, totalSteps);
            step = state.GlobalStep;
            position = new DataPosition(state.DataEpoch, state.DataIndex);
            elapsedBefore = state.ElapsedSeconds;
        }
        else if (CheckpointStore.List(run.OutputDirectory).Count > 0)
        {
            throw new PeftConfigurationException("output:dir", run.OutputDirectory,
                "already holds checkpoints of an earlier run: continue it with training:resume = latest, or choose another output folder");
        }
        int startStep = step;

        var metrics = parallel.IsWriter ? new MetricsLog(run.OutputDirectory, startStep) : null;
        if (startStep == 0 && run.BaselineEvaluation is { } baseline)
            metrics?.LogEval(0, baseline.Loss, baseline.CountedTokens, 0);
        var sampler = new EpochSampler(run.Data.Train.Count, o.BatchSize, o.Seed, run.Data.ShuffleTrain, position);
        var context = new TrainingContext
        {
            Model = model, Optimizer = run.Optimizer, TrainableParameters = trainable,
            TotalSteps = totalSteps, Seed = o.Seed, Step = step,
            Record = fields => metrics?.LogEvent(step + 1, fields),
        };
        var trainableTensors = trainable.Select(p => p.Parameter).ToList();
        var steps = new List<StepRecord>();
        var evaluations = new List<EvalRecord>();
        var clock = Stopwatch.StartNew();
        double Elapsed() => elapsedBefore + clock.Elapsed.TotalSeconds;
        bool interrupted = false;
        int lastCheckpoint = startStep;
        var summary = TrainingSummary.Measure(model, trainable, run.Optimizer);
        using var precision = MixedPrecision.For(o, trainable, run.Optimizer); // training:precision (fp32: does nothing)

        run.Progress.Run(startStep, totalSteps, sink =>
        {
            sink.WriteLine(run.Data.Description.Length > 0 ? run.Data.Description : $"{run.Data.Train.Count} training examples, {run.Data.Validation.Count} held out");
            sink.WriteLine(summary.Describe());
            sink.WriteLine(startStep > 0 ? $"resumed at step {startStep} of {totalSteps}" : $"training for {totalSteps} steps ({microPerEpoch} micro-batches per epoch, {o.GradientAccumulationSteps} per step)");

            foreach (var hook in run.Hooks) hook.OnTrainingStart(context);
            model.Module.train();
            run.Optimizer.ZeroGrad();

            long peakGradients = 0;
            long? lastStepActivations = null;
            double windowLoss = 0, windowSeconds = 0, windowGradNorm = 0;
            long windowTokens = 0;
            int windowSteps = 0;
            (double Loss, int FromStep, int ToStep)? lastLogged = null;
            while (step < totalSteps)
            {
                if (parallel.AnyRank(cancellation.IsCancellationRequested)) { interrupted = true; break; }
                var stepClock = Stopwatch.StartNew();
                context.Step = step;
                foreach (var hook in run.Hooks) hook.OnStepStart(context);
                double lr = schedule.LearningRate(step);
                if (run.Optimizer is Abstractions.Optimization.IBackwardStepOptimizer layerwise)
                    layerwise.BeginStep(new Abstractions.Optimization.BackwardStepInfo(lr, o.GradientAccumulationSteps, o.MaxGradNorm));

                // this rank's part of each global micro-batch; token counts are the global batch's
                var micro = new List<CollatedBatch>(o.GradientAccumulationSteps);
                int countedTokens = 0, realTokens = 0;
                for (int a = 0; a < o.GradientAccumulationSteps; a++)
                {
                    var (local, counted, real) = parallel.Split(sampler.NextBatch(), run.Data.Train, run.Data.PadId);
                    if (local is not null) micro.Add(local);
                    countedTokens += counted;
                    realTokens += real;
                }
                double lossSum = 0;
                lastStepActivations = null; // the last step's (the first one's include one-time allocations)
                precision.BeginStep();
                foreach (var batch in micro)
                {
                    lossSum += ForwardBackward(model, batch, countedTokens, step + 1, o.LossChunkTokens, out var activations, precision.LossScale);
                    if (activations is { } a) lastStepActivations = Math.Max(lastStepActivations ?? 0, a);
                }
                parallel.SumGradients(trainableTensors);   // Σ over ranks, bucketed (before unscaling, clipping and the step)
                lossSum = parallel.Sum(lossSum);
                bool applied = precision.EndBackward(); // false: fp16 overflow, the step is skipped
                peakGradients = Math.Max(peakGradients, HeldMemory.HeldGradientBytes(trainable));
                double loss = lossSum / countedTokens;
                if (!double.IsFinite(loss))
                    throw new TrainingException($"the loss is {loss.ToString(CultureInfo.InvariantCulture)} at step {step + 1}: training diverged (lower training:learning_rate, or check the data)");

                double gradNorm = applied ? GradientClipping.ClipByGlobalNorm(trainableTensors, o.MaxGradNorm) : 0;
                if (!double.IsFinite(gradNorm))
                    throw new TrainingException($"the gradient norm is {gradNorm.ToString(CultureInfo.InvariantCulture)} at step {step + 1}: training diverged");
                if (applied) run.Optimizer.Step(lr);
                else metrics?.LogEvent(step + 1, new System.Text.Json.Nodes.JsonObject { ["precision"] = precision.Mode, ["skipped"] = true, ["loss_scale"] = precision.LossScale });
                run.Optimizer.ZeroGrad();
                foreach (var hook in run.Hooks) hook.OnStepEnd(context);
                step++;

                double seconds = stepClock.Elapsed.TotalSeconds;
                steps.Add(new StepRecord(step, loss, lr, gradNorm, countedTokens));
                windowLoss += loss; windowGradNorm += gradNorm; windowSeconds += seconds; windowTokens += realTokens; windowSteps++;
                bool logStep = step % o.LogEvery == 0 || step == totalSteps;
                double tokensPerSecond = windowTokens / Math.Max(1e-9, windowSeconds);
                if (logStep)
                {
                    double epoch = (double)step * o.GradientAccumulationSteps / microPerEpoch;
                    metrics?.LogTrain(step, windowLoss / windowSteps, lr, windowGradNorm / windowSteps, tokensPerSecond, Elapsed(), epoch);
                }
                sink.OnStep(new StepReport(step, totalSteps, startStep, logStep ? windowLoss / windowSteps : loss, lr,
                    logStep ? windowGradNorm / windowSteps : gradNorm, tokensPerSecond, clock.Elapsed, logStep));
                if (logStep) lastLogged = (windowLoss / windowSteps, step - windowSteps + 1, step);
                if (logStep) { windowLoss = 0; windowGradNorm = 0; windowSeconds = 0; windowTokens = 0; windowSteps = 0; }

                bool evalStep = parallel.IsWriter && run.Data.Validation.Count > 0 && ((o.EvalEvery > 0 && step % o.EvalEvery == 0) || step == totalSteps);
                if (evalStep)
                {
                    var (evalLoss, evalTokens) = Evaluate(model, run.Data.Validation, o.BatchSize, o.EvalBatches, run.Data.PadId, o.LossChunkTokens);
                    evaluations.Add(new EvalRecord(step, evalLoss, evalTokens));
                    metrics!.LogEval(step, evalLoss, evalTokens, Elapsed());
                    sink.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {step}: eval loss {evalLoss:0.0000} over {evalTokens} tokens"));
                }

                if (o.CheckpointEvery > 0 && (step % o.CheckpointEvery == 0 || step == totalSteps))
                {
                    SaveCheckpoint(run, step, totalSteps, sampler.Position, loss, Elapsed());
                    lastCheckpoint = step;
                    if (parallel.IsWriter) sink.WriteLine($"step {step}: checkpoint {CheckpointStore.PathOf(run.OutputDirectory, step)}");
                }
            }

            sink.Finish();
            if (interrupted && step > lastCheckpoint)
            {
                SaveCheckpoint(run, step, totalSteps, sampler.Position, steps.Count > 0 ? steps[^1].Loss : null, Elapsed());
                if (parallel.IsWriter) sink.WriteLine($"stopped at step {step}: checkpoint {CheckpointStore.PathOf(run.OutputDirectory, step)}");
            }

            if (!interrupted && parallel.IsWriter) run.Output.WriteFinal(run.OutputDirectory);
            summary = TrainingSummary.Measure(model, trainable, run.Optimizer) with
            {
                TrainExamples = run.Data.Train.Count,
                ValidationExamples = run.Data.Validation.Count,
                TotalSteps = totalSteps,
                FinalStep = step,
                // the last printed (and logged) loss: the mean over the steps since the previous log line
                FinalLoss = lastLogged?.Loss,
                FinalLossSteps = lastLogged is { } w ? [w.FromStep, w.ToStep] : null,
                LastStepLoss = steps.Count > 0 ? steps[^1].Loss : null,
                FinalEvalLoss = evaluations.Count > 0 ? evaluations[^1].Loss : null,
                ElapsedSeconds = Math.Round(Elapsed(), 3),
                Hooks = HookStates.Save(run.Hooks),
                HeldMemory = HeldMemory.Measure(model, trainable, run.Optimizer, peakGradients, lastStepActivations),
            };
            sink.WriteLine(summary.Describe());
            sink.WriteLine(summary.HeldMemory!.Describe());
            if (precision.Active) sink.WriteLine(precision.Describe());
            var finalLoss = summary.FinalLoss is { } fl && summary.FinalLossSteps is [var from, var to]
                ? string.Create(CultureInfo.InvariantCulture, $" (final loss {fl:0.0000}, mean of steps {from}-{to})") : "";
            sink.WriteLine(interrupted ? $"interrupted after step {step}{finalLoss}; continue with training:resume = latest" : $"done: {step} steps{finalLoss}, result in {run.OutputDirectory}");
        });

        if (parallel.IsWriter)
            AtomicFile.WriteText(Path.Combine(run.OutputDirectory, "training_summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        if (run.WriteLossCurve && metrics is not null)
        {
            var (trainCurve, evalCurve) = MetricsLog.ReadCurves(metrics.Path);
            LossCurvePlot.Write(Path.Combine(run.OutputDirectory, LossCurvePlot.FileName), trainCurve, evalCurve);
        }
        return new TrainingResult
        {
            Steps = steps, Evaluations = evaluations, StartStep = startStep, FinalStep = step,
            TotalSteps = totalSteps, Interrupted = interrupted, Summary = summary,
        };
    }

    /// <summary>Forward and backward of one micro-batch; returns its summed loss. Every tensor of the pass is freed on return.
    /// <paramref name="activations"/>: the C-heap bytes the forward pass left alive for backward (null if unreadable);
    /// <paramref name="lossScale"/>: fp16-mixed's loss scale S (the backward pass sees S · loss).</summary>
    static double ForwardBackward(Model.ICausalLanguageModel model, CollatedBatch batch, int stepTokens, int stepNumber, int lossChunkTokens, out long? activations, double lossScale = 1)
    {
        using var scope = torch.NewDisposeScope();
        var (inputIds, labels) = batch.ToTensors(model.Device);
        long? heapBefore = ProcessMemory.HeapInUse();
        var sum = CausalLmLoss.Sum(model, inputIds, labels, lossChunkTokens);
        activations = heapBefore is { } hb && ProcessMemory.HeapInUse() is { } ha ? ha - hb : null;
        if (!sum.requires_grad)
            throw new TrainingException($"no parameter requires grad at step {stepNumber}: the method or a hook froze every trainable parameter");
        var scaled = lossScale == 1 ? sum / stepTokens : sum * (lossScale / stepTokens);
        scaled.backward();
        return sum.item<float>();
    }

    /// <summary>Mean loss over the counted tokens of the first <paramref name="maxBatches"/> held-out micro-batches (0 = all), in file order.</summary>
    public static (double Loss, long Tokens) Evaluate(Model.ICausalLanguageModel model, IReadOnlyList<TokenizedExample> examples, int batchSize, int maxBatches, int padId,
        int lossChunkTokens = CausalLmLoss.DefaultChunkTokens)
    {
        model.Module.eval();
        try
        {
            using var noGrad = torch.no_grad();
            double sum = 0;
            long tokens = 0;
            int batches = 0;
            for (int start = 0; start < examples.Count; start += batchSize)
            {
                if (maxBatches > 0 && batches >= maxBatches) break;
                using var scope = torch.NewDisposeScope();
                var batch = BatchCollator.Collate(examples.Skip(start).Take(batchSize).ToList(), padId);
                var (inputIds, labels) = batch.ToTensors(model.Device);
                sum += CausalLmLoss.Sum(model, inputIds, labels, lossChunkTokens).item<float>();
                tokens += batch.CountedTokens;
                batches++;
            }
            return (tokens == 0 ? double.NaN : sum / tokens, tokens);
        }
        finally
        {
            model.Module.train();
        }
    }

    static void SaveCheckpoint(TrainingRun run, int step, int totalSteps, DataPosition position, double? loss, double elapsedSeconds)
    {
        // the whole optimizer state on rank 0 (a collective under ZeRO-1); only rank 0 writes
        var optimizerState = run.Parallel.OptimizerStateForCheckpoint(run.Optimizer);
        if (optimizerState is null) return;
        var o = run.Options;
        using var scope = torch.NewDisposeScope();
        using var rng = torch.get_rng_state();
        var state = new TrainerState
        {
            GlobalStep = step,
            TotalSteps = totalSteps,
            LrScheduler = o.LrScheduler,
            SchedulerStep = step,
            Seed = o.Seed,
            DataEpoch = position.Epoch,
            DataIndex = position.Index,
            DataShuffle = run.Data.ShuffleTrain,
            TrainExamples = run.Data.Train.Count,
            BatchSize = o.BatchSize,
            GradientAccumulationSteps = o.GradientAccumulationSteps,
            TorchRngState = Convert.ToBase64String(rng.bytes.ToArray()),
            ElapsedSeconds = Math.Round(elapsedSeconds, 3),
            Loss = loss is { } l && double.IsFinite(l) ? l : null,
            TrainableParameters = run.TrainableParameters.Select(p => p.Name).ToList(),
            Hooks = HookStates.Save(run.Hooks),
        };
        var trainable = run.TrainableParameters.ToDictionary(p => p.Name, p => (Tensor)p.Parameter, StringComparer.Ordinal);
        CheckpointStore.Write(CheckpointStore.PathOf(run.OutputDirectory, step), state, trainable, optimizerState, run.Output);
        CheckpointStore.Prune(run.OutputDirectory, o.KeepLastCheckpoints);
    }

    /// <summary>Load a checkpoint into the run: trainable weights, optimizer state, torch's generator. Returns its state.</summary>
    static TrainerState Restore(TrainingRun run, string directory, int totalSteps)
    {
        var o = run.Options;
        var state = CheckpointStore.ReadState(directory);
        void Same<T>(string key, T now, T then)
        {
            if (!EqualityComparer<T>.Default.Equals(now, then))
                throw new PeftConfigurationException(key, Convert.ToString(now, CultureInfo.InvariantCulture),
                    $"differs from the checkpoint {directory}, which was made with {Convert.ToString(then, CultureInfo.InvariantCulture)}; a resumed run must keep it");
        }
        Same("training:seed", o.Seed, state.Seed);
        Same("training:batch_size", o.BatchSize, state.BatchSize);
        Same("training:gradient_accumulation_steps", o.GradientAccumulationSteps, state.GradientAccumulationSteps);
        Same("data:shuffle", run.Data.ShuffleTrain, state.DataShuffle);
        if (run.Data.Train.Count != state.TrainExamples)
            throw new PeftConfigurationException("data:path", null, $"gives {run.Data.Train.Count} training examples, the checkpoint {directory} was made with {state.TrainExamples}; a resumed run must use the same data");
        if (state.GlobalStep > totalSteps)
            throw new PeftConfigurationException("training:max_steps", totalSteps.ToString(CultureInfo.InvariantCulture), $"is below the checkpoint's step {state.GlobalStep} ({directory})");
        if (state.DataIndex < 0 || state.DataIndex >= run.Data.Train.Count || state.DataEpoch < 0)
            throw new PeftFormatException($"{Path.Combine(directory, CheckpointStore.StateFile)}: data position (epoch {state.DataEpoch}, index {state.DataIndex}) is outside the {run.Data.Train.Count} training examples");

        // trainable weights: exactly the run's trainable names, same shapes
        var weightsPath = Path.Combine(directory, CheckpointStore.TrainableFile);
        var weights = Safetensors.Load(weightsPath);
        try
        {
            var expected = run.TrainableParameters.ToDictionary(p => p.Name, p => p.Parameter, StringComparer.Ordinal);
            foreach (var key in weights.Keys)
                if (!expected.ContainsKey(key)) throw new PeftFormatException($"{weightsPath}: tensor '{key}' is not a trainable parameter of this run (was the checkpoint made with another method or configuration?)");
            using var noGrad = torch.no_grad();
            foreach (var (name, p) in expected)
            {
                if (!weights.TryGetValue(name, out var t)) throw new PeftFormatException($"{weightsPath}: trainable parameter '{name}' is missing");
                if (!t.shape.SequenceEqual(p.shape))
                    throw new PeftFormatException($"{weightsPath}: tensor '{name}' has shape [{string.Join(", ", t.shape)}], the parameter has [{string.Join(", ", p.shape)}]");
                if (t.dtype != p.dtype) throw new PeftFormatException($"{weightsPath}: tensor '{name}' is {t.dtype}, the parameter is {p.dtype}");
                p.copy_(t);
            }
        }
        finally { foreach (var t in weights.Values) t.Dispose(); }

        var optimizerPath = Path.Combine(directory, CheckpointStore.OptimizerFile);
        var optimizerState = Safetensors.Load(optimizerPath);
        try { run.Optimizer.LoadState(optimizerState); }
        catch (ArgumentException e) { throw new PeftFormatException($"{optimizerPath}: {e.Message}"); }
        finally { foreach (var t in optimizerState.Values) t.Dispose(); }

        byte[] rngBytes;
        try { rngBytes = Convert.FromBase64String(state.TorchRngState); }
        catch (FormatException) { throw new PeftFormatException($"{Path.Combine(directory, CheckpointStore.StateFile)}: torch_rng_state is not base64"); }
        using (var rng = torch.tensor(rngBytes, dtype: ScalarType.Byte)) torch.set_rng_state(rng);
        HookStates.Load(run.Hooks, state.Hooks, Path.Combine(directory, CheckpointStore.StateFile));
        return state;
    }
}
