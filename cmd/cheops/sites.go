package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"cheops/agent"
)

func init() {
	register(&cli.Command{
		Name:  "sites",
		Usage: "membership: every site, up or down, its RTT and when it was last seen",
		Flags: []cli.Flag{agentFlag(), &cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}}},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			ctx, cancel := clientContext(c)
			defer cancel()
			var sites []agent.SiteJSON
			if err := getJSON(ctx, c, "/v1/sites", &sites); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, sites)
			}
			return printSites(c, sites, time.Now())
		},
	})
}

// printSites writes the membership table: one row per site, this one
// marked, conflicts spelled out under the table.
func printSites(c *cli.Context, sites []agent.SiteJSON, now time.Time) error {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tSTATE\tRTT\tLAST SEEN\tPEER")
	var conflicts []string
	for _, s := range sites {
		name, rtt, seen := s.Site, "-", "never"
		if s.Self {
			name += " (self)"
			seen = "-"
		} else if s.RTTms > 0 {
			rtt = fmt.Sprintf("%.1f ms", s.RTTms)
		}
		if t, err := time.Parse(time.RFC3339, s.LastSeen); err == nil && !s.Self {
			seen = fmt.Sprintf("%s ago", max(now.Sub(t), 0).Round(time.Second))
		}
		state := s.State
		if len(s.Conflicts) > 0 {
			state += " (CONFLICT)"
			conflicts = append(conflicts, fmt.Sprintf("site name %q held by %s, also claimed by %s", s.Site, s.Peer, strings.Join(s.Conflicts, ", ")))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, state, rtt, seen, s.Peer)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range conflicts {
		fmt.Fprintln(c.App.ErrWriter, "warning:", line)
	}
	return nil
}
