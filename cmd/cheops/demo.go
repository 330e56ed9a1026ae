package main

import (
	"errors"

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
			err := demo.Run(c.Context, demo.Options{Out: c.App.Writer, Dir: c.String("dir"), ExitAfterScenario: c.Bool("exit-after-scenario")})
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
