using System.Text.RegularExpressions;
using Peft.Host.Cli;
using static Peft.Host.Formats.FolderPaths;

namespace Peft.Host.Commands;

/// <summary>
/// What a command may do to the folder it writes (<c>--out</c>, <c>output:dir</c>), checked before any work:
/// <list type="bullet">
/// <item>never a folder that is, contains or is inside one of its inputs (a merge onto its own adapter, an import
///   into <c>.</c> above its checkpoint), nor the current directory or one above it — not even with <c>--overwrite</c>;</item>
/// <item>an existing non-empty folder is replaced only when it holds nothing but what this command writes (a previous
///   output of the same command), or when the user says <c>--overwrite</c>.</item>
/// </list>
/// The folder itself is then written under a temporary sibling name and renamed into place
/// (<see cref="Formats.AtomicFile.WriteDirectory"/>), so a failure leaves the old one untouched.
/// </summary>
public static class OutputFolderGuard
{
    /// <summary>The files an HF model folder written by <c>import-llama2c</c>, <c>merge</c> or full fine-tuning holds.</summary>
    public static readonly Regex HfModelFolderEntry = new(
        @"^(config\.json|generation_config\.json|model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|tokenizer\.model|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json)$",
        RegexOptions.CultureInvariant);

    /// <summary>
    /// Refuse a target that is, contains or is inside one of <paramref name="inputs"/> (option name, path), or that is
    /// the current directory or one of its parents. Inputs may be files or folders.
    /// </summary>
    public static void RefuseInputOverlap(string verb, string option, string target, params (string Option, string? Path)[] inputs)
    {
        var t = RealPath(target);
        var cwd = RealPath(Directory.GetCurrentDirectory());
        if (t == cwd || IsInside(cwd, t))
            throw new CliException($"{verb}: option '{option}': '{target}' is the current directory{(t == cwd ? "" : " or above it")}; write into a new folder (e.g. {option} out/{verb}-result)");
        foreach (var (inputOption, inputPath) in inputs)
        {
            if (inputPath is null) continue;
            var i = RealPath(inputPath);
            string? relation = t == i ? "is" : IsInside(i, t) ? "contains" : IsInside(t, i) ? "is inside" : null;
            if (relation is not null)
                throw new CliException($"{verb}: option '{option}': '{target}' {relation} the input given with {inputOption} ('{inputPath}'); write the result to a folder apart from the inputs");
        }
    }

    /// <summary>
    /// A folder the command replaces whole: absent, empty, or holding only entries <paramref name="isOwnEntry"/>
    /// accepts (a previous output of the same command) is fine; anything else is refused unless
    /// <paramref name="overwrite"/>. A file at the path is always refused.
    /// </summary>
    public static void RefuseForeignContent(string verb, string option, string target, bool overwrite, Func<FileSystemInfo, bool> isOwnEntry, string whatItWrites)
    {
        if (File.Exists(target)) throw new CliException($"{verb}: option '{option}': '{target}' is a file, not a folder");
        if (!Directory.Exists(target) || overwrite) return;
        var foreign = new DirectoryInfo(target).EnumerateFileSystemInfos().Where(e => !isOwnEntry(e)).Select(e => e.Name).Order(StringComparer.Ordinal).ToList();
        if (foreign.Count == 0) return;
        var shown = string.Join(", ", foreign.Take(3).Select(n => $"'{n}'")) + (foreign.Count > 3 ? $" and {foreign.Count - 3} more" : "");
        throw new CliException($"{verb}: option '{option}': '{target}' already exists and holds {shown}, which peft {verb} did not write " +
                               $"(it writes {whatItWrites}); choose another folder, or add --overwrite to replace the whole folder");
    }

    /// <summary>Both checks for a command that writes a whole HF model folder.</summary>
    public static void CheckModelFolderTarget(string verb, string option, string target, bool overwrite, params (string Option, string? Path)[] inputs)
    {
        RefuseInputOverlap(verb, option, target, inputs);
        RefuseForeignContent(verb, option, target, overwrite, e => e is FileInfo && HfModelFolderEntry.IsMatch(e.Name),
            "config.json, model*.safetensors, tokenizer files");
    }
}
