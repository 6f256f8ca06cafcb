using System.Globalization;

namespace Peft.Host.Cli;

/// <summary>
/// The options after a verb: <c>--name value</c>, <c>--name=value</c>, bare flags, and repeatable options
/// (<c>--set A:B=1 --set C=2</c>). Every option a command does not read is an error naming it
/// (<see cref="ThrowOnUnused"/>), so a typo never passes silently.
/// </summary>
public sealed class CommandArgs
{
    readonly List<(string Name, string? Value)> _items = new();
    readonly HashSet<string> _used = new(StringComparer.Ordinal);
    readonly HashSet<string> _missingValue = new(StringComparer.Ordinal); // "--x" last, or followed by another option
    readonly string _verb;

    public CommandArgs(string verb, IReadOnlyList<string> args, IReadOnlySet<string> flagNames)
    {
        _verb = verb;
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
                throw new CliException($"{verb}: unexpected argument '{a}' (options start with --; see 'peft {verb} --help')");
            var eq = a.IndexOf('=');
            if (eq > 0) { _items.Add((a[..eq], a[(eq + 1)..])); continue; }
            if (flagNames.Contains(a)) { _items.Add((a, null)); continue; }
            if (i + 1 >= args.Count || (args[i + 1].StartsWith("--", StringComparison.Ordinal) && args[i + 1].Length > 2))
            {
                // a known option without its value, or a misspelled flag: decided when the command reads its options
                _missingValue.Add(a);
                _items.Add((a, null));
                continue;
            }
            _items.Add((a, args[++i]));
        }
    }

    public bool Help => _items.Any(x => x.Name is "--help" or "-h");

    public string? Optional(string name)
    {
        _used.Add(name);
        if (_missingValue.Contains(name)) throw new CliException($"{_verb}: option '{name}' needs a value");
        string? value = null;
        int count = 0;
        foreach (var (n, v) in _items)
            if (n == name) { value = v; count++; }
        if (count > 1) throw new CliException($"{_verb}: option '{name}' given {count} times");
        return value;
    }

    public IReadOnlyList<string> Many(string name)
    {
        _used.Add(name);
        return _items.Where(x => x.Name == name).Select(x => x.Value ?? "").ToList();
    }

    public string Required(string name)
    {
        if (Optional(name) is { } value) return value;
        // "--modle x" is a typo of "--model", not a missing --model
        var typo = _items.Select(x => x.Name).FirstOrDefault(n => !_used.Contains(n) && n.Length > 2 && name.Length > 2 && Distance(n[2..], name[2..]) <= 2);
        if (typo is not null) throw new CliException($"{_verb}: unknown option '{typo}' (did you mean '{name}'? see 'peft {_verb} --help')");
        throw new CliException($"{_verb}: missing required option '{name}' (see 'peft {_verb} --help')");
    }

    static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }

    public bool Flag(string name)
    {
        _used.Add(name);
        var hit = _items.Where(x => x.Name == name).ToList();
        if (hit.Any(x => x.Value is not null)) throw new CliException($"{_verb}: flag '{name}' takes no value");
        return hit.Count > 0;
    }

    public int Int(string name, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        var s = Optional(name);
        if (s is null) return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
            throw new CliException($"{_verb}: option '{name}' has value '{s}': expected an integer in [{min}, {max}]");
        return v;
    }

    public double Double(string name, double fallback, double min = double.NegativeInfinity, double max = double.PositiveInfinity)
    {
        var s = Optional(name);
        if (s is null) return fallback;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v) || v < min || v > max)
            throw new CliException($"{_verb}: option '{name}' has value '{s}': expected a number in [{min}, {max}]");
        return v;
    }

    /// <summary>A path that must exist (file or folder).</summary>
    public string ExistingPath(string name, bool required = true)
    {
        var p = required ? Required(name) : Optional(name);
        if (p is null) return null!;
        if (!File.Exists(p) && !Directory.Exists(p)) throw new CliException($"{_verb}: option '{name}': '{p}' does not exist");
        return p;
    }

    /// <summary>Call after reading every option: an option nobody read is a typo or a flag of another verb.</summary>
    public void ThrowOnUnused()
    {
        foreach (var (n, _) in _items)
            if (!_used.Contains(n) && n is not "--help" and not "-h")
            {
                var near = _used.Where(u => u.Length > 2 && n.Length > 2 && Distance(n[2..], u[2..]) <= 2).Order(StringComparer.Ordinal).FirstOrDefault();
                throw new CliException($"{_verb}: unknown option '{n}' ({(near is null ? "" : $"did you mean '{near}'? ")}see 'peft {_verb} --help')");
            }
    }
}
