package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"cheops/agent"
	"cheops/errcode"
	"cheops/scope"
)

func init() {
	register(&cli.Command{
		Name:  "scope",
		Usage: "work with the scope language (check, offline) and an agent's named scopes (define, ls, undefine)",
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     "parse a scope, print its canonical form and, given sites, its plan",
			ArgsUsage: "SCOPE",
			Description: `Parses SCOPE and prints its canonical form. Given sites (--sites and/or
--membership), also prints the plan of each service the scope binds (or of
--service) as an agent at --site would make it: the ';' alternatives, the
target sites (required, standby, pending) and why every other site was left
out. Nothing is sent on the network.

The membership file is JSON:
  {"local": "paris",
   "sites": {"paris":  {"state": "up", "rtt_ms": {"berlin": 12, "rome": 30}},
             "berlin": {"state": "up", "rtt_ms": {"rome": 20}},
             "rome":   {"state": "down"}}}
state is up, suspect, down or unknown; rtt_ms holds the round-trip times
that site measured to others (either direction counts). --sites
paris=up,berlin=down adds sites or overrides their state (a bare name is up).
The local site is --site, else the file's "local", else the first site of
--sites.

Exit status: 0 the scope is valid (and every plan found a reachable site),
1 some plan has no reachable site (unreachable), 2 bad input: a syntax error
(bad_scope, with its column, counted in characters from 1), an unknown site
(unknown_site), a service the scope does not place (unbound_service), a bad
flag or membership file. The codes are those an agent answers for the same
mistakes; --json gives each plan's "error" and "code".`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "site", Usage: "the local site plans start from (default: the membership file's, else the first of --sites)", EnvVars: []string{"CHEOPS_SITE"}},
				&cli.StringFlag{Name: "sites", Usage: "known sites and their state: paris=up,berlin=down", EnvVars: []string{"CHEOPS_SITES"}},
				&cli.StringFlag{Name: "membership", Usage: "JSON membership `FILE` with states and RTTs (see below)", EnvVars: []string{"CHEOPS_MEMBERSHIP"}},
				&cli.StringFlag{Name: "service", Usage: "plan only this service", EnvVars: []string{"CHEOPS_PLAN_SERVICE"}},
				&cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}},
			},
			Action: scopeCheck,
		}, {
			Name:      "define",
			Usage:     "name a scope on the agent: /s/NAME/svc/SERVICE/… then runs with it",
			ArgsUsage: "NAME SCOPE",
			Description: `Names SCOPE on the agent (--agent): a request to /s/NAME/svc/SERVICE/… runs as
one with that scope would. Clients that take only a base URL and choke on
percent signs (the openstack CLI) use it: --os-endpoint
http://127.0.0.1:7070/s/NAME/svc/glance. A name is resolved by the agent that
receives the request, never replicated: define it on each agent clients use
(or give every agent --scope-name NAME=SCOPE). Defining a name again replaces
it; names from --scope-name cannot be changed here.

Exit status: 0 defined, 1 the agent failed, 2 bad input (a name outside
[A-Za-z][A-Za-z0-9_.-]*: bad_input; a scope that does not parse: bad_scope; a
name of the agent's configuration: bound_by_config).`,
			Flags:  []cli.Flag{agentFlag(), &cli.BoolFlag{Name: "json", Usage: "print the definition as JSON", EnvVars: []string{"CHEOPS_JSON"}}},
			Action: scopeDefine,
		}, {
			Name:   "ls",
			Usage:  "list the agent's named scopes",
			Flags:  []cli.Flag{agentFlag(), &cli.BoolFlag{Name: "json", Usage: "print one JSON document", EnvVars: []string{"CHEOPS_JSON"}}},
			Action: scopeList,
		}, {
			Name:      "undefine",
			Usage:     "remove a name defined with scope define",
			ArgsUsage: "NAME",
			Flags:     []cli.Flag{agentFlag()},
			Action:    scopeUndefine,
		}},
	})
}

// membershipFile is the JSON form of a scope.View accepted by --membership.
type membershipFile struct {
	Local string                    `json:"local"`
	Sites map[string]membershipSite `json:"sites"`
}

type membershipSite struct {
	State string             `json:"state"`
	RTTms map[string]float64 `json:"rtt_ms"`
}

// checkResult is what `scope check --json` prints.
type checkResult struct {
	Canonical string       `json:"canonical"`
	Local     string       `json:"local,omitempty"`
	Sites     []siteResult `json:"sites,omitempty"`
	Plans     []planResult `json:"plans,omitempty"`
}

type siteResult struct {
	Site  string `json:"site"`
	State string `json:"state"`
}

type planResult struct {
	Service      string              `json:"service"`
	Expr         string              `json:"expr,omitempty"`
	Targets      []targetResult      `json:"targets"`
	Alternatives []scope.Alternative `json:"alternatives"`
	Chosen       int                 `json:"chosen"`
	Excluded     []scope.Exclusion   `json:"excluded"`
	Error        string              `json:"error,omitempty"`
	// Code is the error's code, the one an agent answers for the same
	// mistake (unknown_site, unbound_service, unreachable).
	Code string `json:"code,omitempty"`
	// err is the planner's error, kept for the exit status.
	err error
}

type targetResult struct {
	Site      string `json:"site"`
	Required  bool   `json:"required"`
	Reachable bool   `json:"reachable"`
	// RTTms is the round-trip time from the local site; absent when
	// neither side measured it.
	RTTms *float64 `json:"rtt_ms,omitempty"`
}

func scopeCheck(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("scope check takes exactly one SCOPE argument, got %d", c.NArg())
	}
	src := c.Args().First()
	s, err := scope.Parse(src)
	if err != nil {
		return usageError("%v (%s)%s", err, errcode.Of(err), caret(src, err))
	}
	view, haveView, err := checkView(c)
	if err != nil {
		return usageError("%v", err)
	}
	res := checkResult{Canonical: s.String()}
	if haveView {
		res.Local = view.Local
		for _, name := range sortedNames(view) {
			res.Sites = append(res.Sites, siteResult{name, view.Sites[name].State.String()})
		}
		services := s.Services()
		if svc := c.String("service"); svc != "" {
			services = []string{svc}
		} else if len(services) == 0 {
			services = []string{""} // a bare expression
		}
		for _, svc := range services {
			res.Plans = append(res.Plans, planOf(s, svc, view))
		}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return failure("writing output: %v", err)
		}
	} else {
		printCheck(c.App.Writer, res)
	}
	// Bad input first (exit 2), then plans that cannot run (exit 1).
	for _, p := range res.Plans {
		if errors.Is(p.err, scope.ErrUnknownSite) || errors.Is(p.err, scope.ErrNoBinding) {
			return usageError("%v (%s)", p.err, p.Code)
		}
	}
	for _, p := range res.Plans {
		if p.err != nil {
			return failure("%s: %v (%s)", serviceLabel(p.Service), p.err, p.Code)
		}
	}
	return nil
}

// caret draws the input with a mark under the column of a syntax error,
// when the input is one short line where columns line up.
func caret(src string, err error) string {
	var se *scope.SyntaxError
	if !errors.As(err, &se) || len(src) > 120 {
		return ""
	}
	n := 0
	for _, r := range src {
		if !unicode.IsPrint(r) || r > unicode.MaxLatin1 {
			return ""
		}
		n++
	}
	if se.Column < 1 || se.Column > n+1 {
		return ""
	}
	return "\n  " + src + "\n  " + strings.Repeat(" ", se.Column-1) + "^"
}

func serviceLabel(svc string) string {
	if svc == "" {
		return "(any service)"
	}
	return svc
}

func planOf(s *scope.Scope, svc string, view scope.View) planResult {
	p, err := s.Plan(svc, view)
	out := planResult{Service: svc, Chosen: -1, err: err}
	if err != nil {
		out.Error, out.Code = err.Error(), errcode.Of(err)
	}
	if p == nil {
		return out
	}
	out.Expr, out.Alternatives, out.Chosen, out.Excluded = p.Expr, p.Alternatives, p.Chosen, p.Excluded
	// Empty lists print as [] rather than null.
	out.Targets = []targetResult{}
	if out.Excluded == nil {
		out.Excluded = []scope.Exclusion{}
	}
	for _, t := range p.Targets {
		tr := targetResult{Site: t.Site, Required: t.Required, Reachable: t.Reachable}
		if d, ok := view.RTT(view.Local, t.Site); ok {
			ms := float64(d) / float64(time.Millisecond)
			tr.RTTms = &ms
		}
		out.Targets = append(out.Targets, tr)
	}
	return out
}

func printCheck(w io.Writer, res checkResult) {
	fmt.Fprintln(w, res.Canonical)
	if res.Local == "" {
		return
	}
	var states []string
	for _, s := range res.Sites {
		states = append(states, s.Site+" "+s.State)
	}
	fmt.Fprintf(w, "\nplanned at %s; sites: %s\n", res.Local, strings.Join(states, ", "))
	for _, p := range res.Plans {
		var buf bytes.Buffer
		tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "\n%s: %s\n", serviceLabel(p.Service), p.Expr)
		if p.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", p.Error)
		}
		if len(p.Alternatives) > 1 {
			fmt.Fprintln(tw, "  alternatives:")
			for i, a := range p.Alternatives {
				state := "complete"
				switch {
				case !a.Runnable:
					state = "cannot run: " + a.Reason
				case !a.Complete:
					state = "partial: " + a.Reason
				}
				if i == p.Chosen {
					state += "  <- chosen"
				}
				fmt.Fprintf(tw, "    %d.\t%s\t%s\n", i+1, a.Expr, state)
			}
		}
		if len(p.Targets) > 0 {
			fmt.Fprintln(tw, "  targets:")
		}
		for _, t := range p.Targets {
			role := "required"
			if !t.Required {
				role = "standby"
			}
			reach := "reachable"
			if !t.Reachable {
				reach = "unreachable"
				if t.Required {
					reach = "pending (unreachable)"
				}
			}
			rtt := "rtt unmeasured"
			if t.RTTms != nil {
				rtt = fmt.Sprintf("rtt %.1f ms", *t.RTTms)
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", t.Site, role, reach, rtt)
		}
		tw.Flush()
		w.Write(buf.Bytes())
		buf.Reset()
		tw = tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
		if len(p.Excluded) > 0 {
			fmt.Fprintln(tw, "  excluded:")
		}
		for _, x := range p.Excluded {
			fmt.Fprintf(tw, "    %s\t%s\n", x.Site, x.Reason)
		}
		tw.Flush()
		w.Write(buf.Bytes())
	}
}

func sortedNames(v scope.View) []string {
	names := make([]string, 0, len(v.Sites))
	for n := range v.Sites {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkView builds the membership view from --membership and/or --sites.
// have is false when neither is given: then there is nothing to plan.
func checkView(c *cli.Context) (v scope.View, have bool, err error) {
	v = scope.View{Local: c.String("site"), Sites: map[string]scope.SiteInfo{}}
	fileLocal, firstListed := "", ""
	if path := c.String("membership"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return v, false, fmt.Errorf("membership file: %w", err)
		}
		var m membershipFile
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			return v, false, fmt.Errorf("membership file %s: %w", path, err)
		}
		fileLocal = m.Local
		for name, s := range m.Sites {
			if !scope.ValidName(name) {
				return v, false, fmt.Errorf("membership file %s: %q is not a site name", path, name)
			}
			st, ok := scope.ParseState(s.State)
			if !ok {
				return v, false, fmt.Errorf("membership file %s: site %s: state %q is not up, suspect, down or unknown", path, name, s.State)
			}
			info := scope.SiteInfo{Name: name, State: st, RTT: map[string]time.Duration{}}
			for other, ms := range s.RTTms {
				if ms < 0 {
					return v, false, fmt.Errorf("membership file %s: site %s: negative RTT to %s", path, name, other)
				}
				info.RTT[other] = time.Duration(ms * float64(time.Millisecond))
			}
			v.Sites[name] = info
		}
		have = true
	}
	if list := c.String("sites"); list != "" {
		for _, item := range strings.Split(list, ",") {
			name, state, found := strings.Cut(strings.TrimSpace(item), "=")
			if !found {
				state = "up"
			}
			st, ok := scope.ParseState(state)
			if !scope.ValidName(name) || !ok {
				return v, false, fmt.Errorf("--sites: %q is not NAME or NAME=up|suspect|down|unknown", item)
			}
			if firstListed == "" {
				firstListed = name
			}
			info := v.Sites[name]
			info.Name, info.State = name, st
			v.Sites[name] = info
		}
		have = true
	}
	if !have {
		return v, false, nil
	}
	for _, l := range []string{fileLocal, firstListed} {
		if v.Local == "" {
			v.Local = l
		}
	}
	if v.Local == "" {
		return v, false, errors.New("no local site: give --site")
	}
	if _, ok := v.Sites[v.Local]; !ok {
		return v, false, fmt.Errorf("local site %s is not among the known sites %v", v.Local, sortedNames(v))
	}
	return v, true, nil
}

// scopeDefine runs `cheops scope define NAME SCOPE`.
func scopeDefine(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError("scope define takes NAME and SCOPE, got %d arguments", c.NArg())
	}
	name, text := c.Args().Get(0), c.Args().Get(1)
	if _, err := scope.Parse(text); err != nil {
		return usageError("%v (%s)", err, errcode.Of(err))
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	body, _ := json.Marshal(agent.ScopeDefinition{Scope: text})
	var ns agent.NamedScope
	if err := call(ctx, c, "PUT", "/v1/scopes/"+url.PathEscape(name), bytes.NewReader(body), &ns); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, ns)
	}
	fmt.Fprintf(c.App.Writer, "%s = %s\n", ns.Name, ns.Scope)
	return nil
}

// scopeList runs `cheops scope ls`.
func scopeList(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var list []agent.NamedScope
	if err := getJSON(ctx, c, "/v1/scopes", &list); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, list)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tSCOPE")
	for _, ns := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ns.Name, ns.Source, ns.Scope)
	}
	return tw.Flush()
}

// scopeUndefine runs `cheops scope undefine NAME`.
func scopeUndefine(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("scope undefine takes one NAME, got %d arguments", c.NArg())
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	var ns agent.NamedScope
	if err := call(ctx, c, "DELETE", "/v1/scopes/"+url.PathEscape(c.Args().First()), nil, &ns); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "undefined %s (was %s)\n", ns.Name, ns.Scope)
	return nil
}
