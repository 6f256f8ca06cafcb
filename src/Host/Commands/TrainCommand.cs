using Peft.Host.Cli;
using Peft.Host.Composition;
using Peft.Host.Configuration;
using Peft.Host.Data;
using Peft.Host.Distributed;
using Peft.Host.Import;
using Peft.Host.Model;
using Peft.Host.Plugins;
using Peft.Host.Tokenization;
using Peft.Host.Training;
using TorchSharp;

namespace Peft.Host.Commands;

/// <summary><c>peft train --config FILE [--set ...] [--resume DIR|latest]</c>: one training run, any method or combination.</summary>
public sealed class TrainCommand : ICliCommand
{
    public string Name => "train";
    public string Summary => "fine-tune a model with a method (or a combination) from a JSON configuration";
    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "--overwrite" };

    public string Help =>
        "usage: peft train --config FILE [--set SECTION:KEY=VALUE]... [--plugins DIR]... [--resume DIR|latest] [--overwrite]\n\n" +
        "Sections of the JSON file (snake_case keys):\n" +
        "  model         path (HF folder), import_llama2c { checkpoint, tokenizer } to create it first\n" +
        "  method        name (lora, dora... see 'peft plugins'; \"full\" or absent: full fine-tuning) + its options\n" +
        "  quantization  name (a quantizer plugin, e.g. nf4) + its options; applied before the method (without a\n" +
        "                method only with an optimizer that trains quantized weights, e.g. int8 + galore)\n" +
        "  optimizer     name (default adamw; e.g. galore) + its options\n" +
        "  hooks         list of { name, ... } (e.g. lisa)\n" +
        "  data          path, format, seq_len, validation_fraction | validation_path, max_rows, shuffle\n" +
        "  training      seed, batch_size, gradient_accumulation_steps, max_steps | epochs, learning_rate,\n" +
        "                weight_decay, lr_scheduler, warmup_steps, max_grad_norm, eval_every, eval_batches,\n" +
        "                checkpoint_every, keep_last_checkpoints, base_dtype, activation_checkpointing, log_every,\n" +
        "                num_threads (LibTorch CPU threads; 0 = default)\n" +
        "  output        dir: receives adapter/ (PEFT methods) or model/ (full fine-tuning), checkpoints/,\n" +
        "                metrics.jsonl, loss_curve.png, training_summary.json;\n" +
        "                merge_adapter (true: one merged model/ instead of adapter/; a hook that trains base\n" +
        "                weights, e.g. lisa with lora, adds model/ with the trained base next to adapter/)\n\n" +
        "options:\n" +
        HostConfiguration.OptionsHelp + "\n" +
        "  --resume DIR|latest        continue from a checkpoint folder, or the newest in output:dir/checkpoints;\n" +
        "                             a finished run stays finished unless training:max_steps was raised\n" +
        "  --overwrite                start a new run in an output:dir that holds an earlier run (removes only the\n" +
        "                             files peft train writes there)\n" +
        "One run at a time per output:dir (a lock file). SIGINT and SIGTERM save a checkpoint, then exit 130 / 143.\n\n" +
        "example:\n" +
        "  peft train --config examples/quickstart.json --set training:max_steps=50";

    public int Run(CommandArgs args, CliContext context)
    {
        var root = HostConfiguration.Load(args);
        // under MPICH's mpiexec -n N (N > 1) this process is one rank of a data-parallel run (docs/distributed.md)
        var distributed = DistributedOptions.From(root);
        using var parallel = DistributedLaunch.FromEnvironment(distributed);
        if (!parallel.Enabled) return Run(args, context, root, parallel, distributed);
        try { return Run(args, context, root, parallel, distributed); }
        catch (Exception e)
        {
            // one rank failing must not leave the others waiting in a collective: end the whole job
            bool known = e is CliException or Formats.PeftFormatException or Abstractions.PeftConfigurationException or Abstractions.PeftDataException or PluginLoadException or TrainingException;
            DistributedLaunch.AbortJob(parallel, context.Error, known ? $"error: {e.Message}" : e.ToString(), known ? 2 : 1);
            throw;
        }
    }

    int Run(CommandArgs args, CliContext context, Microsoft.Extensions.Configuration.IConfiguration root, DataParallelism parallel, DistributedOptions distributed)
    {
        var resume = args.Optional("--resume");
        var overwrite = args.Flag("--overwrite");
        args.ThrowOnUnused();

        var modelOptions = ModelOptions.From(root);
        var cfg = TrainingConfiguration.Bind(root);
        if (resume is not null) cfg.Training.Resume = resume;
        var outputDir = cfg.Output.Dir ?? throw new Abstractions.PeftConfigurationException("output:dir", null, "is required (where the adapter, checkpoints and metrics go)");

        LibTorchThreads.Apply(cfg.Training.NumThreads);

        // Every component name is resolved (and the combination checked) before any model is imported or loaded.
        using var catalog = PluginCatalog.LoadForHost(context.BaseDirectory, root);
        var plan = PeftComposer.Plan(catalog, root);

        var modelDir = modelOptions.Path!;
        parallel.CheckBatchSize(cfg.Training.BatchSize);
        // before any work: one run per output folder, and what the folder already holds (see RunFolderPreflight);
        // with several ranks rank 0 decides (and imports) and tells the others
        using var runLock = parallel.IsWriter ? RunLock.Acquire(outputDir) : null;
        if (runLock?.StaleNote is not null) context.Error.WriteLine(runLock.StaleNote);
        string? complete = null;
        if (parallel.IsWriter)
        {
            complete = RunFolderPreflight.Check(root, cfg.Training, outputDir, modelDir, overwrite).CompleteMessage;
            if (complete is null && !Directory.Exists(modelDir))
            {
                var import = modelOptions.ImportLlama2c!;
                context.Out.WriteLine($"importing {import.Checkpoint} into {modelDir}");
                Llama2cImporter.Import(import.Checkpoint!, import.Tokenizer!, modelDir);
            }
        }
        if (parallel.AnyRank(complete is not null)) complete ??= "the run is already complete (rank 0)";
        if (complete is not null)
        {
            if (parallel.IsWriter) context.Out.WriteLine(complete);
            return 0;
        }
        using var signals = new StopSignals();
        using var rankLog = parallel.IsWriter ? null : DistributedLaunch.RankLog(outputDir, parallel.Rank);
        var log = rankLog ?? context.Out;
        if (parallel.Enabled)
            log.WriteLine($"rank {parallel.Rank} of {parallel.WorldSize} (pid {Environment.ProcessId}, {parallel.Communicator.Transport}): global batch {cfg.Training.BatchSize}, {cfg.Training.BatchSize / parallel.WorldSize} examples per rank" +
                          (distributed.Zero == 1 ? ", ZeRO-1 optimizer-state sharding" : ""));

        // base_dtype bfloat16 with a method: the frozen base is read straight into bf16 (no fp32 copy of the model; see ModelPreparation.LoadDtype)
        var loadDtype = ModelPreparation.LoadDtype(cfg.Training, plan, Directory.Exists(modelDir) ? HfModelFolder.StoredDtype(modelDir) : null);
        var (model, tokenizer) = ModelFolderArgs.Open(Name, modelDir, catalog, storageDtype: loadDtype);
        using (model)
        {
            // The seed fixes the adapter's initialisation as well as dropout and data order.
            torch.manual_seed(cfg.Training.Seed);
            var composed = PeftComposer.Compose(plan, model, root, cfg.Training.ToOptimizerSettings());
            var optimizerSection = plan.OptimizerSelection?.Section ?? root.GetSection("optimizer");
            using var optimizer = DistributedLaunch.Optimizer(parallel, distributed, composed.Optimizer, plan.OptimizerStrategy, optimizerSection,
                plan.Quantizer is not null && plan.Method is null && plan.OptimizerStrategy.TrainsQuantizedWeights, composed.TrainableParameters,
                shard => plan.OptimizerStrategy.Create(model, shard, cfg.Training.ToOptimizerSettings(), optimizerSection));
            var data = TrainingDataSet.Load(cfg.Data, tokenizer, cfg.Training.Seed);
            var (output, outputs) = TrainedBaseOutput.For(composed, model, modelDir, cfg.Output.MergeAdapter);

            log.WriteLine($"method {composed.MethodName}" +
                                  (composed.QuantizerName is null ? "" : $" on a {composed.QuantizerName} base") +
                                  (composed.Hooks.Count == 0 ? "" : $" with hooks {string.Join(", ", composed.Hooks.Select(h => h.GetType().Name))}"));

            EvalRecord? baseline = null;
            if (cfg.Training.Resume is null && data.Validation.Count > 0 && parallel.IsWriter)
            {
                // The baseline the run's eval losses are compared with.
                var (before, tokens) = Trainer.Evaluate(model, data.Validation, cfg.Training.BatchSize, cfg.Training.EvalBatches, data.PadId);
                baseline = new EvalRecord(0, before, tokens);
                log.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"step 0: eval loss {before:0.0000} over {tokens} tokens (before training)"));
            }

            {
                var result = Trainer.Run(new TrainingRun
                {
                    Model = model,
                    TrainableParameters = composed.TrainableParameters,
                    Optimizer = optimizer,
                    Hooks = composed.Hooks,
                    Data = data,
                    Options = cfg.Training,
                    OutputDirectory = outputDir,
                    Output = output,
                    BaselineEvaluation = baseline,
                    Progress = rankLog is not null ? new PlainTrainingProgress(rankLog)
                             : ReferenceEquals(context.Out, Console.Out) ? TrainingProgress.ForConsole() : new PlainTrainingProgress(context.Out),
                    Parallel = parallel,
                }, signals.Token);
                if (!result.Interrupted)
                    log.WriteLine($"{outputs} in {outputDir}");
                if (parallel.Enabled)
                    log.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                        $"rank {parallel.Rank}: optimizer state held {optimizer.StateBytes} bytes; {parallel.CommunicationSeconds:0.000} s in communication over {result.Steps.Count} steps"));
                if (result.Interrupted) context.Error.WriteLine($"peft train: stopped by {signals.SignalName} after step {result.FinalStep}; exit code {signals.ExitCode}");
                return result.Interrupted ? signals.ExitCode : 0;
            }
        }
    }
}
