package bench

import (
	"io"
	"log/slog"
)

// Report is what a scenario returns: marshalled as one JSON document by
// the caller, printed as a table for people, drawn as plots.
type Report interface {
	// Table writes the figures as a table, each beside its target with
	// "met" or "MISSED" (Verdict).
	Table(w io.Writer)
	// Plot writes the report's plots into dir, their file names starting
	// with prefix, and returns their paths.
	Plot(dir, prefix string) ([]string, error)
	// Missed lists the targets the run missed, one phrase each; empty
	// when every target was met or the scenario sets none. `cheops bench
	// --strict` exits 1 when it is not empty.
	Missed() []string
}

// Verdict is how a table says whether a target was met.
func Verdict(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

// Env is what every scenario is given.
type Env struct {
	// Binary is the cheops executable that agent processes run.
	Binary string
	// Dir is scratch space for data directories and logs.
	Dir string
	// Full selects the long profile; the quick one runs in minutes.
	Full bool
	// Sites, when not zero, replaces the profile's site counts.
	Sites int
	// Agents, when set, are the APIs (http://host:port) of a running
	// deployment to measure instead of starting sites on this machine.
	Agents []string
	// Log receives progress.
	Log *slog.Logger
}
