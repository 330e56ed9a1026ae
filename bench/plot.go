package bench

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotSelectivity draws, per site, the KiB received with scoped and with
// full replication, and writes it to path (.svg or .png).
func PlotSelectivity(res SelectivityResult, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Catalog traffic per site: %d sites, %d resources, scopes of %d", res.Sites, res.Resources, res.ScopeSize)
	p.Y.Label.Text = "KiB received"
	scoped, full := make(plotter.Values, len(res.Scoped.Sites)), make(plotter.Values, len(res.Full.Sites))
	var names []string
	for i, s := range res.Scoped.Sites {
		scoped[i] = float64(s.BytesReceived) / 1024
		full[i] = float64(res.Full.Sites[i].BytesReceived) / 1024
		names = append(names, s.Site)
	}
	w := vg.Points(10)
	barsFull, err := plotter.NewBarChart(full, w)
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	barsFull.Color = grey
	barsFull.LineStyle.Width = 0
	barsFull.Offset = -w / 2
	barsScoped, err := plotter.NewBarChart(scoped, w)
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	barsScoped.Offset = w / 2
	barsScoped.Color = blue
	barsScoped.LineStyle.Width = 0
	p.Add(barsFull, barsScoped)
	p.Legend.Add("full replication", barsFull)
	p.Legend.Add("cheops (scoped)", barsScoped)
	p.Legend.Top = true
	p.Legend.XOffs = -vg.Points(12)
	p.NominalX(names...)
	if err := p.Save(8*vg.Inch, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("bench: save plot: %w", err)
	}
	return nil
}

var (
	blue = color.RGBA{R: 0x1f, G: 0x6f, B: 0xb4, A: 0xff}
	grey = color.RGBA{R: 0xb0, G: 0xb0, B: 0xb0, A: 0xff}
)
