namespace Peft.Host.Training;

/// <summary>
/// Writes what a run produces in the format of its method: adapter files for PEFT methods (<c>Composition.AdapterOutput</c>),
/// a complete HF model folder for full fine-tuning (<c>Composition.HfModelOutput</c>). The trainer keeps its own
/// copy of the trainable weights in every checkpoint for resuming, so a writer only adds files for people and tools.
/// </summary>
public interface ITrainingOutput
{
    /// <summary>Write the trained result into <paramref name="directory"/> (the run's output folder; it exists). Write each file atomically.</summary>
    void WriteFinal(string directory);

    /// <summary>Add files to a checkpoint being built in <paramref name="directory"/> (a temporary folder renamed into place afterwards).</summary>
    void WriteCheckpoint(string directory) { }
}
