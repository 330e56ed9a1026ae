package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"cheops/demo"
)

func init() {
	register(&cli.Command{
		Name:  "demo",
		Usage: "run three sites on this machine and a narrated scenario: replicate, cut a site off, heal, converge",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "exit-after-scenario", Usage: "exit when the scenario ends (0 when converged) instead of leaving the sites running", EnvVars: []string{"CHEOPS_DEMO_EXIT"}},
			&cli.StringFlag{Name: "dir", Usage: "keep the sites' data here instead of a temporary directory", EnvVars: []string{"CHEOPS_DEMO_DIR"}},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			err := demo.Run(c.Context, demo.Options{Out: c.App.Writer, Dir: c.String("dir"), ExitAfterScenario: c.Bool("exit-after-scenario"),
				Command: selfCommand()})
			if errors.Is(err, demo.ErrNotConverged) {
				return failure("%v", err)
			}
			if err != nil {
				return failure("%v", err)
			}
			return nil
		},
	})
}

// selfCommand is how a user types this binary in a shell started where
// this one was: "cheops" when that name on PATH is this very file, else
// its path, relative to the working directory when under it
// ("bin/cheops"), so that the commands the demo prints run as printed.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "cheops"
	}
	cwd, _ := os.Getwd()
	return commandFor(exe, cwd, exec.LookPath)
}

// commandFor is selfCommand for the binary exe, the working directory cwd
// and a PATH lookup.
func commandFor(exe, cwd string, lookPath func(string) (string, error)) string {
	if onPath, err := lookPath("cheops"); err == nil && sameFile(onPath, exe) {
		return "cheops"
	}
	if rel, err := filepath.Rel(cwd, exe); err == nil && cwd != "" && !strings.HasPrefix(rel, "..") {
		if !strings.Contains(rel, string(filepath.Separator)) {
			rel = "." + string(filepath.Separator) + rel // a bare name would be looked up on PATH
		}
		return rel
	}
	return exe
}

// sameFile reports whether paths a and b name one file.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}
