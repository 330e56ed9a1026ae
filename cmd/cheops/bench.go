package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"cheops/bench"
)

func init() {
	register(&cli.Command{
		Name:      "bench",
		Usage:     "partition-tolerance benchmarks (so far: selectivity)",
		ArgsUsage: "SCENARIO",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "sites", Usage: "sites in the run", Value: 10, EnvVars: []string{"CHEOPS_BENCH_SITES"}},
			&cli.IntFlag{Name: "resources", Usage: "resources written", Value: 200, EnvVars: []string{"CHEOPS_BENCH_RESOURCES"}},
			&cli.IntFlag{Name: "scope-size", Usage: "sites per resource scope", Value: 2, EnvVars: []string{"CHEOPS_BENCH_SCOPE_SIZE"}},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}},
			&cli.StringFlag{Name: "out", Usage: "also write the JSON result into this directory", EnvVars: []string{"CHEOPS_BENCH_OUT"}},
			&cli.BoolFlag{Name: "full", Usage: "the long profile (5x the resources)", EnvVars: []string{"CHEOPS_BENCH_FULL"}},
		},
		Action: runBench,
	})
}

func runBench(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("bench takes one SCENARIO, got %d arguments", c.NArg())
	}
	switch c.Args().First() {
	case "selectivity":
	case "convergence", "forwarding", "availability", "scale":
		return failure("bench %s is not written yet; see `go test -bench` in crdt and e2e for its figures", c.Args().First())
	default:
		return usageError("unknown scenario %q: want selectivity, convergence, forwarding, availability or scale", c.Args().First())
	}
	resources := c.Int("resources")
	if c.Bool("full") {
		resources *= 5
	}
	res, err := bench.RunSelectivity(c.Context, bench.SelectivityOptions{
		Sites: c.Int("sites"), Resources: resources, ScopeSize: c.Int("scope-size"), Seed: 1, Progress: c.App.ErrWriter})
	if err != nil {
		return failure("%v", err)
	}
	data, _ := json.MarshalIndent(res, "", "  ")
	if dir := c.String("out"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return failure("--out: %v", err)
		}
		stamp := time.Now().UTC().Format("20060102T150405Z")
		name := filepath.Join(dir, "selectivity-"+stamp+".json")
		if err := os.WriteFile(name, append(data, '\n'), 0o644); err != nil {
			return failure("--out: %v", err)
		}
		if err := bench.PlotSelectivity(res, filepath.Join(dir, "selectivity-"+stamp+".svg")); err != nil {
			return failure("--out: %v", err)
		}
	}
	if c.Bool("json") {
		fmt.Fprintln(c.App.Writer, string(data))
		return nil
	}
	w := c.App.Writer
	fmt.Fprintf(w, "selectivity: %d sites, %d resources, scopes of %d (in-process sites on loopback)\n\n", res.Sites, res.Resources, res.ScopeSize)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "site\tentries\trequired\tKiB in (scoped)\tKiB in (full)\t")
	for i, s := range res.Scoped.Sites {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t\n", s.Site, s.Entries, s.Required, float64(s.BytesReceived)/1024, float64(res.Full.Sites[i].BytesReceived)/1024)
	}
	tw.Flush()
	fmt.Fprintf(w, "\ntotal received: scoped %.1f KiB, full replication %.1f KiB: ratio %.2f (target <= %.2f)\n",
		float64(res.Scoped.TotalBytes)/1024, float64(res.Full.TotalBytes)/1024, res.Ratio, res.RatioTarget)
	fmt.Fprintf(w, "leaked bytes (group data at non-members): %d (target 0)\n", res.LeakedBytes)
	fmt.Fprintf(w, "converged: scoped %v, full %v\n", res.Scoped.Converged.Round(time.Millisecond), res.Full.Converged.Round(time.Millisecond))
	return nil
}
