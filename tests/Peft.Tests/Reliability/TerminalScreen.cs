using System.Text;
using System.Text.RegularExpressions;

namespace Peft.Tests.Reliability;

/// <summary>
/// A minimal VT100 screen: what a terminal of <c>columns</c> width shows after a byte stream. Printable characters
/// with xterm's auto-wrap (a character written in the last column sets a pending wrap), CR, LF, cursor up/down
/// (CSI n A / B) and erase in line (CSI n K). Other escape sequences (colours, cursor visibility) are skipped.
/// Enough to see whether a live progress display leaves fragments behind.
/// </summary>
public sealed class TerminalScreen
{
    static readonly Regex Csi = new(@"\G\u001b\[([?0-9;]*)([A-Za-z])", RegexOptions.CultureInvariant);
    readonly List<char[]> _rows = new();
    readonly int _columns;
    int _row, _col;
    bool _pendingWrap;

    public TerminalScreen(int columns) => _columns = columns;

    char[] Row(int r)
    {
        while (_rows.Count <= r) _rows.Add(Enumerable.Repeat(' ', _columns).ToArray());
        return _rows[r];
    }

    public void Write(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\u001b')
            {
                var m = Csi.Match(text, i);
                if (m.Success)
                {
                    int n = int.TryParse(m.Groups[1].Value, out var v) ? v : 0;
                    switch (m.Groups[2].Value)
                    {
                        case "A": _row = Math.Max(0, _row - Math.Max(1, n)); _pendingWrap = false; break;
                        case "B": _row += Math.Max(1, n); _pendingWrap = false; break;
                        case "K":
                            var row = Row(_row);
                            int from = n == 0 ? _col : 0, to = n == 1 ? _col + 1 : _columns;
                            for (int x = from; x < to && x < _columns; x++) row[x] = ' ';
                            break;
                    }
                    i += m.Length - 1;
                }
                else if (i + 1 < text.Length && text[i + 1] is '=' or '>') i++;
                continue;
            }
            if (c == '\r') { _col = 0; _pendingWrap = false; }
            else if (c == '\n') { _row++; _pendingWrap = false; }
            else if (!char.IsControl(c))
            {
                if (_pendingWrap) { _row++; _col = 0; _pendingWrap = false; }
                Row(_row)[_col] = c;
                if (_col == _columns - 1) _pendingWrap = true;
                else _col++;
            }
        }
    }

    /// <summary>The screen's rows (scroll-back included), trailing spaces and trailing empty rows removed.</summary>
    public IReadOnlyList<string> Lines()
    {
        var lines = _rows.Select(r => new string(r).TrimEnd()).ToList();
        while (lines.Count > 0 && lines[^1].Length == 0) lines.RemoveAt(lines.Count - 1);
        return lines;
    }

    public static IReadOnlyList<string> Render(string text, int columns)
    {
        var screen = new TerminalScreen(columns);
        screen.Write(text);
        return screen.Lines();
    }

    public static string Decode(byte[] bytes) => new UTF8Encoding(false).GetString(bytes);
}
