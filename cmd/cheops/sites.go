package main

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"cheops/agent"
	"cheops/errcode"
	"cheops/scope"
)

func init() {
	register(&cli.Command{
		Name:  "sites",
		Usage: "membership: every site, up or down, its RTT and when it was last seen",
		Description: "Lists every site this agent knows, itself included. BOUND says what binds each\n" +
			"site name to its peer id: self, config (the trust configuration) or first-claim\n" +
			"(the first peer that claimed the name, kept in the data directory). A peer whose\n" +
			"claim on a bound name was refused is listed as a CONFLICT.",
		Flags: []cli.Flag{agentFlag(), &cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}}},
		Subcommands: []*cli.Command{{
			Name:      "forget",
			Usage:     "remove a first-claim binding of a site name, so that the next peer to claim it gets it",
			ArgsUsage: "NAME",
			Description: "A site name not bound by the trust configuration is bound, on each site, to the\n" +
				"first peer that claims it, and that binding survives restarts: a peer that\n" +
				"claims the name later is refused. When a site is reinstalled with a new identity,\n" +
				"run this on every other site (or, better, bind the name in their trust files with\n" +
				"'NAME PEERID' and restart them). The next claim binds the name again: run it when\n" +
				"the new peer is the only one claiming it. Bindings of the trust configuration\n" +
				"are changed there, not here.\n\n" +
				"Exit status: 0 forgotten, 1 the agent failed, 2 bad input (the name is not bound:\n" +
				"unknown_site; bound by the trust configuration: bound_by_config).",
			Flags:  []cli.Flag{agentFlag(), &cli.BoolFlag{Name: "json", Usage: "print the removed binding as JSON", EnvVars: []string{"CHEOPS_JSON"}}},
			Action: forgetSite,
		}},
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

// forgetSite runs `cheops sites forget NAME`.
func forgetSite(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("sites forget takes one site NAME, got %d arguments", c.NArg())
	}
	name := c.Args().First()
	if err := scope.CheckName("site", name); err != nil {
		return usageError("%v (%s)", err, errcode.BadInput)
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var b agent.BindingJSON
	if err := call(ctx, c, "POST", "/v1/sites/"+url.PathEscape(name)+"/forget", nil, &b); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, b)
	}
	fmt.Fprintf(c.App.Writer, "forgot %s (was peer %s, bound by first claim since %s); the next peer to claim %s gets it\n", b.Site, b.Peer, b.Since, b.Site)
	return nil
}

// printSites writes the membership table: one row per site, this one
// marked, conflicts spelled out under the table.
func printSites(c *cli.Context, sites []agent.SiteJSON, now time.Time) error {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tSTATE\tRTT\tLAST SEEN\tPEER\tBOUND")
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
			conflicts = append(conflicts, fmt.Sprintf("site name %q bound to %s, also claimed by %s (refused)", s.Site, s.Peer, strings.Join(s.Conflicts, ", ")))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, state, rtt, seen, s.Peer, s.Binding)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range conflicts {
		fmt.Fprintln(c.App.ErrWriter, "warning:", line)
	}
	return nil
}
