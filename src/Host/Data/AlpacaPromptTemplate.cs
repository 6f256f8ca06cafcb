namespace Peft.Host.Data;

/// <summary>
/// The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, <c>train.py</c> PROMPT_DICT), verbatim. The response
/// (the row's <c>output</c>) follows the prompt directly and is the only part the loss is computed on.
/// </summary>
public static class AlpacaPromptTemplate
{
    public const string WithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

    public const string WithoutInput =
        "Below is an instruction that describes a task. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{instruction}\n\n### Response:";

    /// <summary>
    /// Marker some Alpaca-style datasets (alpaca-libre, self-instruct) use for "no input"; treated as an empty
    /// input so the row gets the without-input prompt, as the Alpaca release did when it blanked these.
    /// </summary>
    public const string NoInputMarker = "<noinput>";

    /// <summary>The prompt for a row: the with-input variant when <paramref name="input"/> is non-empty, else the without-input one.</summary>
    public static string Format(string instruction, string? input)
    {
        bool hasInput = !string.IsNullOrEmpty(input) && input.Trim() != NoInputMarker;
        return hasInput
            ? Fill(WithInput, instruction, input!)
            : Fill(WithoutInput, instruction, "");
    }

    // One pass over the template (as Python's str.format): braces inside the row's text are never re-expanded.
    static string Fill(string template, string instruction, string input)
    {
        var sb = new System.Text.StringBuilder(template.Length + instruction.Length + input.Length);
        int i = 0;
        while (i < template.Length)
        {
            if (template.AsSpan(i).StartsWith("{instruction}")) { sb.Append(instruction); i += "{instruction}".Length; }
            else if (template.AsSpan(i).StartsWith("{input}")) { sb.Append(input); i += "{input}".Length; }
            else sb.Append(template[i++]);
        }
        return sb.ToString();
    }
}
