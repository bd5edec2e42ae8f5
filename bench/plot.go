package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var (
	colPaper = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	colPlain = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colPipe  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colBDAT  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	colOther = color.RGBA{R: 148, G: 103, B: 189, A: 255}
)

// mode names a row's dialogue for plots and tables.
func mode(c LoadConfig) string {
	m := "plain"
	switch {
	case c.Chunking:
		m = "pipelining+BDAT"
	case c.Pipelining:
		m = "pipelining"
	}
	if c.PerConn > 1 {
		m += fmt.Sprintf(", %d msg/conn", c.PerConn)
	}
	return m
}

// PlotThroughput draws messages/s against concurrent sessions for the rows
// through RabbitMQ at the paper's latency, with the paper's Table I and
// the protocol's bound.
func PlotThroughput(results []*RowResult, file string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("lsmtp → RabbitMQ at %v RTT: throughput", PaperRTT)
	p.X.Label.Text = "concurrent sessions (clients × concurrency)"
	p.Y.Label.Text = "messages/s"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(5), vg.Points(5)
	p.Add(plotter.NewGrid())

	var paper plotter.XYs
	for _, r := range PaperTable {
		paper = append(paper, plotter.XY{X: float64(r.Sessions()), Y: r.Throughput})
	}
	if err := addPoints(p, "paper, Table I", paper, colPaper, draw.BoxGlyph{}); err != nil {
		return err
	}
	series := map[string]plotter.XYs{}
	bounds := map[string]plotter.XYs{}
	for _, rr := range results {
		if rr.Res == nil || rr.Kind != KindAMQP || rr.Load.RTT != PaperRTT {
			continue
		}
		m := mode(rr.Load)
		series[m] = append(series[m], plotter.XY{X: float64(rr.Load.Sessions), Y: math.Max(rr.Res.Rate, 1)})
		bounds[m] = append(bounds[m], plotter.XY{X: float64(rr.Load.Sessions), Y: rr.Res.Bound})
	}
	names := make([]string, 0, len(series))
	for m := range series {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		col := colOther
		switch m {
		case "plain":
			col = colPlain
		case "pipelining":
			col = colPipe
		case "pipelining+BDAT":
			col = colBDAT
		}
		if err := addPoints(p, "measured, "+m, series[m], col, draw.CircleGlyph{}); err != nil {
			return err
		}
		b := bounds[m]
		sort.Slice(b, func(i, j int) bool { return b[i].X < b[j].X })
		line, err := plotter.NewLine(b)
		if err != nil {
			return err
		}
		line.Color = col
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(line)
		p.Legend.Add("bound, "+m, line)
	}
	return p.Save(8*vg.Inch, 5.5*vg.Inch, file)
}

func addPoints(p *plot.Plot, name string, xys plotter.XYs, col color.Color, shape draw.GlyphDrawer) error {
	sort.Slice(xys, func(i, j int) bool { return xys[i].X < xys[j].X })
	sc, err := plotter.NewScatter(xys)
	if err != nil {
		return err
	}
	sc.GlyphStyle.Color = col
	sc.GlyphStyle.Shape = shape
	sc.GlyphStyle.Radius = vg.Points(4)
	p.Add(sc)
	p.Legend.Add(name, sc)
	return nil
}

// PlotLatency draws p50, p90 and p99 per-message latency, in round trips,
// of every row with emulated latency.
func PlotLatency(results []*RowResult, file string) error {
	var labels []string
	var p50, p90, p99 plotter.Values
	for _, rr := range results {
		if rr.Res == nil || rr.Load.RTT <= 0 || rr.Res.Latency.N == 0 {
			continue
		}
		rtt := rr.Load.RTT.Seconds()
		labels = append(labels, rr.ID)
		p50 = append(p50, rr.Res.Latency.P50.Seconds()/rtt)
		p90 = append(p90, rr.Res.Latency.P90.Seconds()/rtt)
		p99 = append(p99, rr.Res.Latency.P99.Seconds()/rtt)
	}
	if len(labels) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("per-message latency at %v RTT, in round trips (connect to final reply)", PaperRTT)
	p.Y.Label.Text = "round trips"
	p.Add(plotter.NewGrid())
	w := vg.Points(4)
	for i, s := range []struct {
		name string
		v    plotter.Values
		col  color.Color
	}{{"p50", p50, colPlain}, {"p90", p90, colBDAT}, {"p99", p99, colPipe}} {
		bars, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return err
		}
		bars.Color = s.col
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(i-1) * w
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(40)
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = math.Pi / 2
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
	width := vg.Length(math.Max(8, float64(len(labels))*0.28)) * vg.Inch
	return p.Save(width, 5.5*vg.Inch, file)
}

// WritePlots writes throughput.png and latency.png into dir and returns
// their paths.
func WritePlots(results []*RowResult, dir string) ([]string, error) {
	tp := filepath.Join(dir, "throughput.png")
	lat := filepath.Join(dir, "latency.png")
	if err := PlotThroughput(results, tp); err != nil {
		return nil, fmt.Errorf("plot %s: %w", tp, err)
	}
	if err := PlotLatency(results, lat); err != nil {
		return nil, fmt.Errorf("plot %s: %w", lat, err)
	}
	return []string{tp, lat}, nil
}
