package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/urfave/cli/v2"

	"cheops/catalog"
	"cheops/scope"
)

func init() {
	move := func(action string) func(c *cli.Context) error {
		return func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageError("resource %s takes ID and SITE, got %d arguments", action, c.NArg())
			}
			id, site := c.Args().Get(0), c.Args().Get(1)
			if err := checkID(id); err != nil {
				return err
			}
			if !scope.ValidName(site) {
				return usageError("%q is not a site name", site)
			}
			body, _ := json.Marshal(map[string]any{"site": site, "delete": c.Bool("delete")})
			ctx, cancel := clientContext(c)
			defer cancel()
			var res catalog.Resource
			if err := call(ctx, c, "POST", "/v1/resources/"+url.PathEscape(id)+"/"+action, bytes.NewReader(body), &res); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, res)
			}
			fmt.Fprintf(c.App.Writer, "%s now on %s\n", res.ID, siteSummary(res))
			return nil
		}
	}
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print the resource as JSON", EnvVars: []string{"CHEOPS_JSON"}}
	register(&cli.Command{
		Name:  "resource",
		Usage: "change where a resource is replicated",
		Subcommands: []*cli.Command{
			{
				Name:      "attach",
				Usage:     "copy a resource's current state to SITE and add SITE to its replicas (run on a site that holds it; attaches at once leave one copy)",
				ArgsUsage: "ID SITE",
				Flags:     []cli.Flag{agentFlag(), jsonFlag},
				Action:    move("attach"),
			},
			{
				Name:      "detach",
				Usage:     "remove SITE from a resource's replicas; --delete also deletes SITE's copy (SITE must be reachable then)",
				ArgsUsage: "ID SITE",
				Flags: []cli.Flag{agentFlag(), jsonFlag,
					&cli.BoolFlag{Name: "delete", Usage: "delete the detached site's copy in its application", EnvVars: []string{"CHEOPS_DETACH_DELETE"}}},
				Action: move("detach"),
			},
		},
	})
}
