package main

import (
	"bufio"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"cheops/catalog"
	"cheops/crdt"
)

func init() {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{"CHEOPS_JSON"}}
	register(&cli.Command{
		Name:  "catalog",
		Usage: "read this site's catalog of resources",
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list the resources this site holds",
				Flags: []cli.Flag{agentFlag(), jsonFlag,
					&cli.StringFlag{Name: "service", Usage: "only this service's resources", EnvVars: []string{"CHEOPS_CATALOG_SERVICE"}},
					&cli.StringFlag{Name: "site", Usage: "only resources replicated on this site", EnvVars: []string{"CHEOPS_CATALOG_SITE"}}},
				Action: catalogList,
			},
			{
				Name:      "get",
				Usage:     "show one resource: its sites, local ids, pending and failed operations",
				ArgsUsage: "ID",
				Flags:     []cli.Flag{agentFlag(), jsonFlag},
				Action:    catalogGet,
			},
			{
				Name:   "status",
				Usage:  "show how each replication group converges: members, heads, height, fetches, and whether each member's heads matched at the last exchange",
				Flags:  []cli.Flag{agentFlag(), jsonFlag},
				Action: catalogStatus,
			},
			{
				Name:   "watch",
				Usage:  "print one line per catalog change until interrupted",
				Flags:  []cli.Flag{agentFlag(), jsonFlag},
				Action: catalogWatch,
			},
		},
	})
}

func catalogList(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	q := url.Values{}
	if s := c.String("service"); s != "" {
		q.Set("service", s)
	}
	if s := c.String("site"); s != "" {
		q.Set("site", s)
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var list []catalog.Resource
	if err := call(ctx, c, "GET", "/v1/resources?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, list)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tSCOPE\tSITES\tPENDING")
	for _, r := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", r.ID, r.Service, r.Scope, siteSummary(r), pendingCount(r))
	}
	return tw.Flush()
}

func siteSummary(r catalog.Resource) string {
	var parts []string
	for _, s := range sortedSites(r) {
		v := r.PerSite[s]
		parts = append(parts, fmt.Sprintf("%s=%s", s, v.LocalID+statusSuffix(v.Status)))
	}
	return strings.Join(parts, " ")
}

func statusSuffix(status string) string {
	if status == catalog.StatusOK {
		return ""
	}
	return "(" + status + ")"
}

func pendingCount(r catalog.Resource) int {
	n := 0
	for _, v := range r.PerSite {
		n += len(v.Pending)
	}
	return n
}

func sortedSites(r catalog.Resource) []string {
	var out []string
	for s := range r.PerSite {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func catalogGet(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("catalog get takes one ID, got %d arguments", c.NArg())
	}
	if err := checkID(c.Args().First()); err != nil {
		return err
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var r catalog.Resource
	if err := call(ctx, c, "GET", "/v1/resources/"+url.PathEscape(c.Args().First()), nil, &r); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, r)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "id:       %s\nservice:  %s\nscope:    %s\n", r.ID, r.Service, r.Scope)
	if r.CreatedScope != "" && r.CreatedScope != r.Scope {
		// The scope above is the placement as attach and detach left it.
		fmt.Fprintf(w, "created with scope: %s\n", r.CreatedScope)
	}
	fmt.Fprintf(w, "origin:   %s\ncreated:  %s\n\n", r.Origin, r.Created)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tLOCAL ID\tSTATUS\tPENDING\tFAILED\tSUPERSEDED")
	for _, s := range sortedSites(r) {
		v := r.PerSite[s]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s, v.LocalID, v.Status, strings.Join(v.Pending, ","), strings.Join(v.Failed, "; "), strings.Join(v.Superseded, "; "))
	}
	tw.Flush()
	fmt.Fprintln(w, "\noperations:")
	for _, op := range r.Operations {
		var outs []string
		for s, o := range op.Outcomes {
			outs = append(outs, s+"="+o)
		}
		sort.Strings(outs)
		fmt.Fprintf(w, "  %s  %s  %s %s  from %s  [%s]\n", op.At, op.ID, op.Method, op.Path, op.Origin, strings.Join(outs, " "))
	}
	return nil
}

func catalogWatch(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	resp, err := do(c.Context, c, "GET", "/v1/watch", nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if c.Bool("json") {
			fmt.Fprintln(c.App.Writer, data)
			continue
		}
		fmt.Fprintln(c.App.Writer, humanChange(data))
	}
	if c.Context.Err() != nil {
		return nil // interrupted: the normal end
	}
	if err := sc.Err(); err != nil {
		return failure("watch: %v", err)
	}
	return failure("watch: the agent closed the stream")
}

// checkID refuses what cannot be a global resource id (exit 2), before
// asking the agent.
func checkID(id string) error {
	if !catalog.ValidID(id) {
		return usageError("%q is not a resource id (26 characters of Crockford base32, as `cheops catalog ls` shows them)", id)
	}
	return nil
}

// humanChange is one line for a change: what happened to which resource.
func humanChange(data string) string {
	var ch catalog.Change
	if err := jsonUnmarshal(data, &ch); err != nil {
		return data
	}
	switch ch.Kind {
	case catalog.KindMeta:
		return ch.ID + " held here (created, or its sites changed)"
	case catalog.KindOp:
		return ch.ID + " operation " + ch.Op
	case catalog.KindSite:
		return ch.ID + " site " + ch.Site + " updated"
	case catalog.KindRemoved:
		return ch.ID + " no longer held here"
	case catalog.KindResync:
		return "(fell behind: some changes were not shown; run `cheops catalog ls`)"
	default:
		return data
	}
}

func catalogStatus(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var groups []crdt.GroupStatus
	if err := call(ctx, c, "GET", "/v1/catalog/status", nil, &groups); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, groups)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tHEADS\tHEIGHT\tMERGED\tQUEUED\tFETCHING\tDIRTY\tMEMBERS (heads at the last exchange)")
	for _, g := range groups {
		var members []string
		for _, m := range g.Members {
			state := "not compared yet"
			if m.DigestMatch != nil {
				state = "same"
				if !*m.DigestMatch {
					state = "DIFFER"
				}
				state += " " + m.LastExchange.Local().Format("15:04:05")
			}
			if !m.Connected {
				state += ", not connected"
			}
			members = append(members, m.Site+": "+state)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%v\t%s\n", g.Group, len(g.Heads), g.Height, g.Merged, g.Queued, g.Fetching, g.Dirty, strings.Join(members, "; "))
	}
	return tw.Flush()
}
