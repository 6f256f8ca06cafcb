using Peft.Host.Formats;

namespace Peft.Host.Training;

/// <summary><c>loss_curve.png</c>: training loss (per logged step) and evaluation loss against the optimizer step, drawn with ScottPlot.</summary>
public static class LossCurvePlot
{
    public const string FileName = "loss_curve.png";

    /// <summary>Draw the curves and write the PNG atomically. Nothing is written when there is no point to draw.</summary>
    public static bool Write(string path, IReadOnlyList<(int Step, double Loss)> train, IReadOnlyList<(int Step, double Loss)> eval, string title = "Loss")
    {
        var trainPoints = train.Where(p => double.IsFinite(p.Loss)).ToList();
        var evalPoints = eval.Where(p => double.IsFinite(p.Loss)).ToList();
        if (trainPoints.Count == 0 && evalPoints.Count == 0) return false;
        var plot = new ScottPlot.Plot();
        if (trainPoints.Count > 0)
        {
            var line = plot.Add.ScatterLine(trainPoints.Select(p => (double)p.Step).ToArray(), trainPoints.Select(p => p.Loss).ToArray());
            line.LegendText = "train";
        }
        if (evalPoints.Count > 0)
        {
            var line = plot.Add.Scatter(evalPoints.Select(p => (double)p.Step).ToArray(), evalPoints.Select(p => p.Loss).ToArray());
            line.LegendText = "eval";
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("cross-entropy loss");
        plot.ShowLegend();
        var png = plot.GetImageBytes(800, 500, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, fs => fs.Write(png));
        return true;
    }

    /// <summary>
    /// Several named curves in one PNG (e.g. every method's held-out loss in <c>peft compare</c>), written atomically.
    /// Nothing is written when no curve has a finite point.
    /// </summary>
    public static bool WriteSeries(string path, IReadOnlyList<(string Label, IReadOnlyList<(int Step, double Loss)> Points)> series, string title, string yLabel = "held-out loss")
    {
        var plot = new ScottPlot.Plot();
        int drawn = 0;
        foreach (var (label, points) in series)
        {
            var finite = points.Where(p => double.IsFinite(p.Loss)).ToList();
            if (finite.Count == 0) continue;
            var line = plot.Add.ScatterLine(finite.Select(p => (double)p.Step).ToArray(), finite.Select(p => p.Loss).ToArray());
            line.LegendText = label;
            line.MarkerSize = 5;
            if (drawn >= 10) line.LinePattern = ScottPlot.LinePattern.Dashed; // the palette repeats after 10 colours
            drawn++;
        }
        if (drawn == 0) return false;
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel(yLabel);
        plot.ShowLegend(ScottPlot.Edge.Right); // beside the plot: the curves end where a legend inside would sit
        var png = plot.GetImageBytes(1000, 560, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, fs => fs.Write(png));
        return true;
    }

    /// <summary>Named (x, y) series as lines with markers on one plot, written atomically (the bench's scaling plots).</summary>
    public static void WriteSeries(string path, string title, string xLabel, string yLabel, IReadOnlyList<(string Name, IReadOnlyList<(double X, double Y)> Points)> series)
    {
        var plot = new ScottPlot.Plot();
        foreach (var (name, points) in series)
        {
            var line = plot.Add.Scatter(points.Select(p => p.X).ToArray(), points.Select(p => p.Y).ToArray());
            line.LegendText = name;
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        var png = plot.GetImageBytes(800, 500, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, fs => fs.Write(png));
    }
}
