package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"cheops/bench"
)

// scenario runs one benchmark scenario from the command line.
type scenario func(c *cli.Context, env bench.Env) (bench.Report, error)

// scenarios are the benchmarks `cheops bench` knows, by name.
var scenarios = map[string]scenario{
	"availability": func(c *cli.Context, env bench.Env) (bench.Report, error) {
		return bench.RunAvailability(c.Context, env)
	},
	"convergence": func(c *cli.Context, env bench.Env) (bench.Report, error) {
		if n := c.Int("repeat"); n > 0 {
			sites := env.Sites
			if sites == 0 {
				sites = 5
			}
			return bench.RunSoak(c.Context, env, bench.SoakOptions{Sites: sites, Repeat: n,
				RTTs:   []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond},
				Writes: c.Int("writes"), Resources: 50, Deadline: 2 * time.Minute, Seed: 1})
		}
		return bench.RunConvergence(c.Context, env, bench.ConvergenceProfile(env))
	},
	"forwarding": func(c *cli.Context, env bench.Env) (bench.Report, error) {
		return bench.RunForwarding(c.Context, env)
	},
	"scale": func(c *cli.Context, env bench.Env) (bench.Report, error) {
		return bench.RunScale(c.Context, env, bench.ScaleProfile(env))
	},
	"selectivity": func(c *cli.Context, env bench.Env) (bench.Report, error) {
		sites := env.Sites
		if sites == 0 {
			sites = 10
		}
		resources := c.Int("resources")
		if env.Full {
			resources *= 5
		}
		return bench.RunSelectivity(c.Context, bench.SelectivityOptions{
			Sites: sites, Resources: resources, ScopeSize: c.Int("scope-size"), Seed: 1, Progress: c.App.ErrWriter})
	},
}

func scenarioNames() string {
	var names []string
	for n := range scenarios {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func init() {
	register(&cli.Command{
		Name:      "bench",
		Usage:     "partition-tolerance benchmarks: " + scenarioNames(),
		ArgsUsage: "SCENARIO",
		Description: "Runs a scenario's quick profile (--full: the long one): progress on stderr, a table on\n" +
			"stdout (--json: one JSON document), the JSON and the plots into --out DIR.\n" +
			"See bench/README.md for what each scenario measures.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "sites", Usage: "sites in the run (0: the profile's)", EnvVars: []string{"CHEOPS_BENCH_SITES"}},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}},
			&cli.StringFlag{Name: "out", Usage: "write the JSON result and the plots into this `DIR`", EnvVars: []string{"CHEOPS_BENCH_OUT"}},
			&cli.BoolFlag{Name: "full", Usage: "the long profile", EnvVars: []string{"CHEOPS_BENCH_FULL"}},
			&cli.StringSliceFlag{Name: "agents", Usage: "`URL`s of the APIs of a running deployment to measure instead of local sites", EnvVars: []string{"CHEOPS_BENCH_AGENTS"}},
			&cli.IntFlag{Name: "resources", Usage: "selectivity: resources written", Value: 200, EnvVars: []string{"CHEOPS_BENCH_RESOURCES"}},
			&cli.IntFlag{Name: "repeat", Usage: "convergence: soak mode — `N` repetitions on one cluster with random cut shapes (halves, one site alone, flapping), RTT 0, 20, 80 ms in turn", EnvVars: []string{"CHEOPS_BENCH_REPEAT"}},
			&cli.IntFlag{Name: "writes", Usage: "convergence --repeat: writes per repetition", Value: 400, EnvVars: []string{"CHEOPS_BENCH_WRITES"}},
			&cli.BoolFlag{Name: "strict", Usage: "exit 1 when a target is missed", EnvVars: []string{"CHEOPS_BENCH_STRICT"}},
			&cli.IntFlag{Name: "scope-size", Usage: "selectivity: sites per resource scope", Value: 2, EnvVars: []string{"CHEOPS_BENCH_SCOPE_SIZE"}},
		},
		Action: runBench,
	})
	// The bare Go reverse proxy the forwarding scenario measures beside
	// HAProxy and the agents (bench.ServeGoProxy), as a process of its own.
	register(&cli.Command{
		Name:   bench.GoProxyCommand,
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Required: true},
			&cli.StringFlag{Name: "backend", Required: true},
			&cli.StringFlag{Name: "mode", Value: "net/http"},
		},
		Action: func(c *cli.Context) error {
			return bench.ServeGoProxy(c.Context, c.String("listen"), c.String("backend"), c.String("mode"))
		},
	})
}

func runBench(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("bench takes one SCENARIO, got %d arguments", c.NArg())
	}
	name := c.Args().First()
	run, ok := scenarios[name]
	if !ok {
		return usageError("unknown scenario %q: want one of %s", name, scenarioNames())
	}
	if c.Int("sites") < 0 {
		return usageError("--sites must not be negative")
	}
	if c.Int("repeat") < 0 || c.Int("writes") < 2 {
		return usageError("--repeat must not be negative and --writes must be at least 2")
	}
	self, err := os.Executable()
	if err != nil {
		return failure("bench: find the cheops binary: %v", err)
	}
	scratch, err := os.MkdirTemp("", "cheops-bench-")
	if err != nil {
		return failure("bench: %v", err)
	}
	defer os.RemoveAll(scratch)
	var agents []string
	for _, a := range c.StringSlice("agents") {
		for _, u := range strings.Split(a, ",") {
			if u = strings.TrimSpace(u); u != "" {
				if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
					return usageError("--agents: %q is not an http:// or https:// URL", u)
				}
				agents = append(agents, strings.TrimSuffix(u, "/"))
			}
		}
	}
	env := bench.Env{Binary: self, Dir: scratch, Full: c.Bool("full"), Sites: c.Int("sites"), Agents: agents,
		Log: slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	report, err := run(c, env)
	if err != nil {
		return failure("bench %s: %v", name, err)
	}
	doc := benchDocument{Scenario: name, Command: strings.Join(append([]string{"cheops"}, os.Args[1:]...), " "),
		Date: time.Now().UTC().Format(time.RFC3339), Machine: thisMachine(), Result: report}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return failure("bench %s: %v", name, err)
	}
	if dir := c.String("out"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return failure("--out: %v", err)
		}
		prefix := name + "-" + time.Now().UTC().Format("20060102T150405Z")
		if err := os.WriteFile(filepath.Join(dir, prefix+".json"), append(data, '\n'), 0o644); err != nil {
			return failure("--out: %v", err)
		}
		plots, err := report.Plot(dir, prefix)
		if err != nil {
			return failure("--out: %v", err)
		}
		for _, p := range append([]string{filepath.Join(dir, prefix+".json")}, plots...) {
			fmt.Fprintln(c.App.ErrWriter, "wrote", p)
		}
	}
	if c.Bool("json") {
		fmt.Fprintln(c.App.Writer, string(data))
	} else {
		report.Table(c.App.Writer)
	}
	missed := report.Missed()
	if len(missed) == 0 {
		return nil
	}
	if c.Bool("strict") {
		return failure("bench %s: missed: %s", name, strings.Join(missed, "; "))
	}
	fmt.Fprintf(c.App.ErrWriter, "bench %s: missed: %s (--strict: exit 1)\n", name, strings.Join(missed, "; "))
	return nil
}

// benchDocument is the JSON a run prints and writes: the result with what
// it was measured on.
type benchDocument struct {
	Scenario string       `json:"scenario"`
	Command  string       `json:"command"`
	Date     string       `json:"date"`
	Machine  machine      `json:"machine"`
	Result   bench.Report `json:"result"`
}

type machine struct {
	CPUs   int    `json:"cpus"`
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	Go     string `json:"go"`
	Kernel string `json:"kernel,omitempty"`
	Host   string `json:"host,omitempty"`
}

func thisMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.Host, _ = os.Hostname()
	return m
}
