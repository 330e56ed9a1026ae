package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"cheops/node"
)

func init() {
	register(&cli.Command{
		Name:  "id",
		Usage: "print this site's peer id, creating the identity if there is none",
		Description: "The identity (an Ed25519 key, mode 0600) lives in DIR/" + node.IdentityFile + "; the peer id\n" +
			"it prints is what other sites put in their trust file, as 'NAME PEERID' (or\n" +
			"--trust NAME=PEERID), which binds this site's name to this key.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "data `DIR` (created if missing)", Required: true, EnvVars: []string{"CHEOPS_DATA"}},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			_, id, err := node.LoadIdentity(c.String("data"))
			if err != nil {
				return usageError("%v", err)
			}
			fmt.Fprintln(c.App.Writer, id)
			return nil
		},
	})
}
