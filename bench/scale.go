package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// ScaleCase is one size of the scale scenario.
type ScaleCase struct {
	Sites     int `json:"sites"`
	Resources int `json:"resources"`
}

// ScaleFigures is what one size cost.
type ScaleFigures struct {
	ScaleCase
	// HeapPerSite is the process's Go heap after convergence divided by
	// the sites (in-process sites share one process).
	HeapPerSite uint64 `json:"heap_per_site_bytes"`
	// DiskPerSite is the data directories' size divided by the sites.
	DiskPerSite int64 `json:"disk_per_site_bytes"`
	// WritesPerSecond is catalog writes (two per resource, each a batch
	// to the resource's group) accepted per second by their writers.
	WritesPerSecond float64 `json:"writes_per_second"`
	// Converged is the time from the first write until every site held
	// every entry of its scopes.
	Converged time.Duration `json:"converged_ns"`
	// Groups is how many distinct replica sets (crdt groups) the scopes
	// made.
	Groups int `json:"groups"`
}

// ScaleResult is the report of `cheops bench scale`.
type ScaleResult struct {
	Setup string         `json:"setup"`
	Cases []ScaleFigures `json:"cases"`
}

// ScaleProfile lists the sizes of the quick or the full profile.
func ScaleProfile(env Env) []ScaleCase {
	sites, resources := []int{3, 10, 30}, []int{1000}
	if env.Full {
		sites, resources = []int{3, 10, 30, 50}, []int{1000, 10000, 100000}
	}
	if env.Sites > 0 {
		sites = []int{env.Sites}
	}
	var out []ScaleCase
	for _, r := range resources {
		for _, n := range sites {
			out = append(out, ScaleCase{Sites: n, Resources: r})
		}
	}
	return out
}

// RunScale grows the number of sites and resources and measures memory,
// write throughput and convergence of the catalog's replication. Sites
// are in-process (real libp2p hosts and pebble stores on loopback, no
// application): 50 agent processes with json-server each would not fit
// two cores.
func RunScale(ctx context.Context, env Env, cases []ScaleCase) (*ScaleResult, error) {
	if len(env.Agents) > 0 {
		return nil, fmt.Errorf("scale starts up to 50 in-process sites; it cannot run against --agents")
	}
	res := &ScaleResult{Setup: "in-process sites (libp2p on loopback, pebble), scopes of 2 random sites, two catalog entries per resource"}
	for _, cs := range cases {
		env.Log.Info("scale case", "sites", cs.Sites, "resources", cs.Resources)
		names := make([]string, cs.Sites)
		for i := range names {
			names[i] = fmt.Sprintf("s%02d", i)
		}
		rng := rand.New(rand.NewPCG(1, uint64(cs.Sites)))
		scopes := make([][]string, cs.Resources)
		groups := map[string]bool{}
		for i := range scopes {
			perm := rng.Perm(cs.Sites)[:2]
			a, b := names[perm[0]], names[perm[1]]
			scopes[i] = []string{a, b}
			if a > b {
				a, b = b, a
			}
			groups[a+","+b] = true
		}
		run, _, err := replicate(ctx, names, scopes, false)
		if err != nil {
			return res, fmt.Errorf("%d sites, %d resources: %w", cs.Sites, cs.Resources, err)
		}
		f := ScaleFigures{ScaleCase: cs, HeapPerSite: run.HeapBytes / uint64(cs.Sites), DiskPerSite: run.DiskBytes / int64(cs.Sites),
			Converged: run.Converged, Groups: len(groups)}
		if run.Written > 0 {
			f.WritesPerSecond = float64(2*cs.Resources) / run.Written.Seconds()
		}
		env.Log.Info("scale figures", "sites", cs.Sites, "resources", cs.Resources, "heap_per_site_MiB", float64(f.HeapPerSite)/(1<<20),
			"writes_per_s", int(f.WritesPerSecond), "converged", f.Converged)
		res.Cases = append(res.Cases, f)
	}
	return res, nil
}

// Table prints one line per size.
func (r *ScaleResult) Table(out io.Writer) {
	fmt.Fprintf(out, "scale (%s)\n\n", r.Setup)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sites\tresources\tgroups\theap/site MiB\tdisk/site MiB\twrites/s\tconverged ms\t")
	for _, c := range r.Cases {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.1f\t%.0f\t%.0f\t\n", c.Sites, c.Resources, c.Groups, float64(c.HeapPerSite)/(1<<20),
			float64(c.DiskPerSite)/(1<<20), c.WritesPerSecond, ms(c.Converged))
	}
	tw.Flush()
	fmt.Fprintln(out, "\nNo target is set for scale; the figures show how the cost grows.")
}

// Missed is always empty: scale sets no target.
func (r *ScaleResult) Missed() []string { return nil }

// Plot draws heap per site and convergence time against the number of
// sites, one line per resource count.
func (r *ScaleResult) Plot(dir, prefix string) ([]string, error) {
	byRes := map[int]plotter.XYs{}
	conv := map[int]plotter.XYs{}
	var order []int
	for _, c := range r.Cases {
		if _, ok := byRes[c.Resources]; !ok {
			order = append(order, c.Resources)
		}
		byRes[c.Resources] = append(byRes[c.Resources], plotter.XY{X: float64(c.Sites), Y: float64(c.HeapPerSite) / (1 << 20)})
		conv[c.Resources] = append(conv[c.Resources], plotter.XY{X: float64(c.Sites), Y: ms(c.Converged)})
	}
	var paths []string
	for _, fig := range []struct {
		name, title, y string
		data           map[int]plotter.XYs
	}{{"memory", "Go heap per site after convergence", "MiB", byRes}, {"convergence", "Time until every site holds its scopes' entries", "ms", conv}} {
		p := plot.New()
		p.Title.Text = fig.title
		p.X.Label.Text = "sites"
		p.Y.Label.Text = fig.y
		var args []any
		for _, n := range order {
			args = append(args, fmt.Sprintf("%d resources", n), fig.data[n])
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		path := filepath.Join(dir, prefix+"-"+fig.name+".svg")
		if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
			return nil, fmt.Errorf("bench: save plot: %w", err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
