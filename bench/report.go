package bench

import (
	"io"
	"log/slog"
)

// Report is what a scenario returns: marshalled as one JSON document by
// the caller, printed as a table for people, drawn as plots.
type Report interface {
	// Table writes the figures as a table, each beside its target.
	Table(w io.Writer)
	// Plot writes the report's plots into dir, their file names starting
	// with prefix, and returns their paths.
	Plot(dir, prefix string) ([]string, error)
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
