package scope

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Errors of Plan, wrapped with the names involved.
var (
	// ErrUnknownSite: the scope names a site membership does not know.
	ErrUnknownSite = errors.New("unknown site")
	// ErrNoBinding: the scope binds neither the service nor a bare expression.
	ErrNoBinding = errors.New("scope does not place this service")
	// ErrUnreachable: no alternative has a single reachable site.
	ErrUnreachable = errors.New("no site of the scope is reachable")
)

// Plan is where one service's part of a request runs.
type Plan struct {
	Service string
	// Expr is the canonical text of the expression that placed the service.
	Expr string
	// Targets are the sites of the chosen alternative: first the required
	// ones, in the order the expression names them, then the standbys.
	// Required targets must all run the request (an unreachable one is left
	// pending). Standbys are the other reachable choices of '|' and
	// around(), nearest first, to try if a chosen one fails at request time.
	Targets []Target
	// Alternatives lists every ';' alternative in order.
	Alternatives []Alternative
	// Chosen indexes Alternatives; -1 when none has a reachable site.
	Chosen int
	// Excluded are sites the expression named or could have used and the
	// plan does not, each once with the first reason found: those of the
	// chosen alternative first, then those of the others in order.
	Excluded []Exclusion
}

// Target is a site the request goes to.
type Target struct {
	Site      string
	Required  bool
	Reachable bool
	// RTT from the local site, 0 when unmeasured.
	RTT time.Duration
	// Measured is false when neither side measured the RTT: the site
	// counts as the farthest (View.Distance).
	Measured bool
}

// distance is the target's View.Distance.
func (t Target) distance() time.Duration {
	if !t.Measured {
		return Unmeasured
	}
	return t.RTT
}

// Alternative is one ';' branch of the expression.
type Alternative struct {
	Expr string `json:"expr"`
	// Complete: every required site is reachable.
	Complete bool `json:"complete"`
	// Runnable: at least one required site is reachable.
	Runnable bool `json:"runnable"`
	// Reason says why an alternative is not complete.
	Reason string `json:"reason,omitempty"`
}

// Exclusion is a site left out of the plan and why.
type Exclusion struct {
	Site   string `json:"site"`
	Reason string `json:"reason"`
}

// Required returns the sites that must run the request, in order.
func (p *Plan) Required() []string {
	var out []string
	for _, t := range p.Targets {
		if t.Required {
			out = append(out, t.Site)
		}
	}
	return out
}

// Reachable returns the required sites that are reachable now, in
// order; Pending returns the others.
func (p *Plan) Reachable() []string {
	var out []string
	for _, t := range p.Targets {
		if t.Required && t.Reachable {
			out = append(out, t.Site)
		}
	}
	return out
}

// Nearest returns the reachable required target nearest to the local
// site (View.Distance: an unmeasured RTT counts as the farthest); equally
// near targets go in their order. A write sent to the scope's sites
// through one coordinator goes there. ok is false when no required
// target is reachable.
func (p *Plan) Nearest() (Target, bool) {
	var best Target
	found := false
	for _, t := range p.Targets {
		if t.Required && t.Reachable && (!found || t.distance() < best.distance()) {
			best, found = t, true
		}
	}
	return best, found
}

// ReadOrder returns where a read may run, in the order to try: the
// reachable required targets, then the reachable standbys (nearest first,
// as Targets holds them).
func (p *Plan) ReadOrder() []string {
	order := p.Reachable()
	for _, t := range p.Targets {
		if !t.Required && t.Reachable {
			order = append(order, t.Site)
		}
	}
	return order
}

// Pending returns the required sites that are unreachable now.
func (p *Plan) Pending() []string {
	var out []string
	for _, t := range p.Targets {
		if t.Required && !t.Reachable {
			out = append(out, t.Site)
		}
	}
	return out
}

// Plan resolves the scope for service against a membership view.
//
// The rules, operator by operator:
//
//   - SITE is required. A site is reachable when membership says it is up
//     or suspect; an unreachable required site is pending.
//   - '*' requires every site of the view: the local one first, then by
//     name.
//   - 'a & b' requires what a and b require.
//   - 'a | b' takes the term nearest to the local site (for a compound
//     term, its slowest required site; unmeasured RTTs count as infinite),
//     ties broken by the term's canonical text, so by name for sites. Terms
//     whose required sites are all reachable come first; only when there is
//     none is a partially reachable term taken. The other complete terms
//     become standbys.
//   - around(S, D) takes the reachable site nearest to S among those
//     within RTT D of S (S itself at 0; ties: the local site, then by
//     name); the others within D become standbys.
//   - 'a ; b' takes the first term whose required sites are all reachable;
//     failing that, the first with at least one reachable (the rest
//     pending); failing that, none.
//
// At the top level, the ';' terms are the plan's Alternatives. When no
// alternative has a reachable site, Chosen is -1 and the error wraps
// ErrUnreachable, with the plan still returned to explain why. Every site
// named in the expression must be in the view, else the error wraps
// ErrUnknownSite and names it.
//
// Plan is a pure function of its arguments: no network, no clock.
func (s *Scope) Plan(service string, v View) (*Plan, error) {
	e, ok := s.For(service)
	if !ok {
		bound := s.Services()
		near, _ := Nearest(service, bound)
		return nil, &UnboundError{Service: service, Scope: s.String(), Bound: bound, Nearest: near}
	}
	return PlanExpr(service, e, v)
}

// PlanExpr is Plan for an expression.
func PlanExpr(service string, e Expr, v View) (*Plan, error) {
	if name, ok := unknownSite(e, v); ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownSite, name)
	}
	pl := &planner{v: v}
	p := &Plan{Service: service, Expr: Format(e), Chosen: -1}
	alts := []Expr{e}
	if el, ok := e.(Else); ok {
		alts = el.Terms
	}
	res := make([]resolution, len(alts))
	for i, a := range alts {
		res[i] = pl.resolve(a)
		text := p.Expr
		if len(alts) > 1 {
			text = Format(a)
		}
		p.Alternatives = append(p.Alternatives, Alternative{
			Expr:     text,
			Complete: res[i].complete(),
			Runnable: res[i].runnable(),
			Reason:   res[i].reason(),
		})
	}
	p.Chosen = fallback(res)
	var excluded []Exclusion
	if p.Chosen >= 0 {
		p.Targets = mergeTargets(res[p.Chosen].targets)
		excluded = append(excluded, res[p.Chosen].excluded...)
	}
	for i := range res {
		if i == p.Chosen {
			continue
		}
		excluded = pl.excludeAll(excluded, res[i], pl.altReason(p, i))
	}
	p.Excluded = dedupeExclusions(excluded, p.Targets)
	if p.Chosen < 0 {
		return p, fmt.Errorf("%w: %s", ErrUnreachable, p.Expr)
	}
	return p, nil
}

// altReason says why the sites of alternative i are not used.
func (pl *planner) altReason(p *Plan, i int) string {
	a := p.Alternatives[i]
	switch {
	case p.Chosen >= 0 && i > p.Chosen:
		return fmt.Sprintf("alternative %d (%s) not needed: alternative %d was chosen", i+1, a.Expr, p.Chosen+1)
	case a.Runnable:
		return fmt.Sprintf("alternative %d (%s) cannot run fully: %s", i+1, a.Expr, a.Reason)
	default:
		return fmt.Sprintf("alternative %d (%s) cannot run: %s", i+1, a.Expr, a.Reason)
	}
}

// unknownSite returns the first site the expression names that the view
// does not know.
func unknownSite(e Expr, v View) (string, bool) {
	switch e := e.(type) {
	case Site:
		return e.Name, !v.known(e.Name)
	case Around:
		return e.Center, !v.known(e.Center)
	case All:
		return unknownIn(e.Terms, v)
	case Any:
		return unknownIn(e.Terms, v)
	case Else:
		return unknownIn(e.Terms, v)
	}
	return "", false
}

func unknownIn(terms []Expr, v View) (string, bool) {
	for _, t := range terms {
		if name, ok := unknownSite(t, v); ok {
			return name, true
		}
	}
	return "", false
}

// fallback is the rule of ';': the first complete resolution, else the first
// runnable one, else -1.
func fallback(res []resolution) int {
	for i := range res {
		if res[i].complete() {
			return i
		}
	}
	for i := range res {
		if res[i].runnable() {
			return i
		}
	}
	return -1
}

// mergeTargets removes duplicate sites (a site required anywhere is
// required) and puts the required targets first, in order, then the
// standbys, in order.
func mergeTargets(in []Target) []Target {
	required := map[string]bool{}
	for _, t := range in {
		if t.Required {
			required[t.Site] = true
		}
	}
	out := make([]Target, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, pass := range []bool{true, false} {
		for _, t := range in {
			if required[t.Site] != pass || seen[t.Site] {
				continue
			}
			seen[t.Site] = true
			t.Required = pass
			out = append(out, t)
		}
	}
	return out
}

// dedupeExclusions keeps the first reason given for each site, and drops
// the sites the plan uses after all.
func dedupeExclusions(in []Exclusion, used []Target) []Exclusion {
	seen := make(map[string]bool, len(in)+len(used))
	for _, t := range used {
		seen[t.Site] = true
	}
	var out []Exclusion
	for _, x := range in {
		if seen[x.Site] {
			continue
		}
		seen[x.Site] = true
		out = append(out, x)
	}
	return out
}

// resolution is what an expression resolves to against a view.
type resolution struct {
	targets  []Target
	excluded []Exclusion
	// unresolved is set when a choice ('|', around, nested ';') found no
	// reachable candidate: it says why.
	unresolved string
}

func (r resolution) complete() bool {
	if r.unresolved != "" {
		return false
	}
	n := 0
	for _, t := range r.targets {
		if t.Required {
			if !t.Reachable {
				return false
			}
			n++
		}
	}
	return n > 0
}

func (r resolution) runnable() bool {
	for _, t := range r.targets {
		if t.Required && t.Reachable {
			return true
		}
	}
	return false
}

func (r resolution) reason() string {
	if r.unresolved != "" {
		return r.unresolved
	}
	n := 0
	for _, t := range r.targets {
		if t.Required {
			if !t.Reachable {
				return t.Site + " is unreachable"
			}
			n++
		}
	}
	if n == 0 {
		return "no site"
	}
	return ""
}

// cost is how far the reachable required sites are from the local site:
// the slowest one, since a request waits for all of them. An unmeasured RTT
// counts as infinite.
func (r resolution) cost(v View) time.Duration {
	var worst time.Duration
	for _, t := range r.targets {
		if !t.Required || !t.Reachable {
			continue
		}
		worst = max(worst, v.Distance(t.Site))
	}
	return worst
}

// planner resolves expressions against one view.
type planner struct {
	v     View
	names []string // the view's sites in order, computed once when needed
}

// sites lists the view's sites: the local one first, then by name.
func (pl *planner) sites() []string {
	if pl.names != nil {
		return pl.names
	}
	names := make([]string, 0, len(pl.v.Sites))
	for name := range pl.v.Sites {
		names = append(names, name)
	}
	local := pl.v.Local
	sort.Slice(names, func(a, b int) bool {
		if (names[a] == local) != (names[b] == local) {
			return names[a] == local
		}
		return names[a] < names[b]
	})
	pl.names = names
	return names
}

func (pl *planner) target(site string, required bool) Target {
	d, ok := pl.v.RTT(pl.v.Local, site)
	return Target{Site: site, Required: required, Reachable: pl.v.reachable(site), RTT: d, Measured: ok}
}

// unreachable is the reason given for an unreachable site.
func (pl *planner) unreachable(site string) string {
	return "unreachable (" + pl.v.Sites[site].State.String() + ")"
}

// excludeAll appends an exclusion for every site of r: an unreachable site
// because it is unreachable, a reachable one for why.
func (pl *planner) excludeAll(out []Exclusion, r resolution, why string) []Exclusion {
	for _, t := range r.targets {
		reason := why
		if !t.Reachable {
			reason = pl.unreachable(t.Site)
		}
		out = append(out, Exclusion{Site: t.Site, Reason: reason})
	}
	return append(out, r.excluded...)
}

func (pl *planner) resolve(e Expr) resolution {
	switch e := e.(type) {
	case Site:
		return resolution{targets: []Target{pl.target(e.Name, true)}}
	case Every:
		r := resolution{targets: make([]Target, 0, len(pl.v.Sites))}
		for _, name := range pl.sites() {
			r.targets = append(r.targets, pl.target(name, true))
		}
		return r
	case All:
		var r resolution
		for _, t := range e.Terms {
			sub := pl.resolve(t)
			r.targets = append(r.targets, sub.targets...)
			r.excluded = append(r.excluded, sub.excluded...)
			if r.unresolved == "" {
				r.unresolved = sub.unresolved
			}
		}
		return r
	case Any:
		return pl.choose(e)
	case Else:
		subs := make([]resolution, len(e.Terms))
		for i, t := range e.Terms {
			subs[i] = pl.resolve(t)
		}
		chosen := fallback(subs)
		var r resolution
		if chosen < 0 {
			r.unresolved = "no term of " + Format(e) + " is reachable"
		} else {
			r = subs[chosen]
		}
		for i := range subs {
			if i == chosen {
				continue
			}
			var why string
			if chosen < 0 || i < chosen {
				why = cannotRun(e.Terms[i], subs[i])
			} else {
				why = Format(e.Terms[i]) + " not needed: " + Format(e.Terms[chosen]) + " was chosen"
			}
			r.excluded = pl.excludeAll(r.excluded, subs[i], why)
		}
		return r
	case Around:
		return pl.around(e)
	}
	panic(fmt.Sprintf("scope: unknown expression %T", e))
}

// choose resolves 'a | b | ...': the nearest complete term, the other
// complete terms as standbys; failing that, the nearest runnable term.
func (pl *planner) choose(e Any) resolution {
	subs := make([]resolution, len(e.Terms))
	var cands []int
	for i, t := range e.Terms {
		subs[i] = pl.resolve(t)
		if subs[i].complete() {
			cands = append(cands, i)
		}
	}
	partial := len(cands) == 0
	if partial {
		for i := range subs {
			if subs[i].runnable() {
				cands = append(cands, i)
			}
		}
	}
	if len(cands) == 0 {
		r := resolution{unresolved: "no term of " + Format(e) + " is reachable"}
		for i := range subs {
			r.excluded = pl.excludeAll(r.excluded, subs[i], cannotRun(e.Terms[i], subs[i]))
		}
		return r
	}
	costs := make([]time.Duration, len(subs))
	for _, i := range cands {
		costs[i] = subs[i].cost(pl.v)
	}
	sort.SliceStable(cands, func(a, b int) bool {
		i, j := cands[a], cands[b]
		if costs[i] != costs[j] {
			return costs[i] < costs[j]
		}
		return sortKey(e.Terms[i]) < sortKey(e.Terms[j])
	})
	best := cands[0]
	r := resolution{targets: append([]Target(nil), subs[best].targets...), excluded: subs[best].excluded}
	standby := map[int]bool{}
	if !partial {
		for _, i := range cands[1:] {
			standby[i] = true
			for _, t := range subs[i].targets {
				t.Required = false
				r.targets = append(r.targets, t)
			}
		}
	}
	for i := range subs {
		switch {
		case i == best:
		case standby[i]:
			r.excluded = append(r.excluded, subs[i].excluded...)
		case subs[i].complete() || partial && subs[i].runnable():
			r.excluded = pl.excludeAll(r.excluded, subs[i], Format(e.Terms[i])+" is farther than "+Format(e.Terms[best]))
		default:
			r.excluded = pl.excludeAll(r.excluded, subs[i], cannotRun(e.Terms[i], subs[i]))
		}
	}
	return r
}

// cannotRun says why a term that was not chosen could not run, or not
// fully.
func cannotRun(e Expr, r resolution) string {
	if r.runnable() {
		return Format(e) + " cannot run fully: " + r.reason()
	}
	return Format(e) + " cannot run: " + r.reason()
}

// sortKey orders the terms of a choice that are equally near: sites by
// name, compound terms by their canonical text.
func sortKey(e Expr) string {
	if s, ok := e.(Site); ok {
		return s.Name
	}
	return Format(e)
}

// around picks the reachable site nearest to the center within the bound;
// the center itself counts, at distance 0. The others within the bound are
// standbys, nearest to the center first.
func (pl *planner) around(e Around) resolution {
	type cand struct {
		site string
		d    time.Duration
	}
	names := pl.sites()
	cands := make([]cand, 0, len(names))
	r := resolution{excluded: make([]Exclusion, 0, len(names))}
	for _, name := range names {
		d, ok := pl.v.RTT(e.Center, name)
		switch {
		case !ok:
			r.excluded = append(r.excluded, Exclusion{Site: name, Reason: "no RTT measured between " + e.Center + " and " + name})
		case d > e.Within:
			r.excluded = append(r.excluded, Exclusion{Site: name, Reason: "RTT " + d.String() + " from " + e.Center + " is over " + e.Within.String()})
		case !pl.v.reachable(name):
			r.excluded = append(r.excluded, Exclusion{Site: name, Reason: pl.unreachable(name)})
		default:
			cands = append(cands, cand{name, d})
		}
	}
	if len(cands) == 0 {
		r.unresolved = "no reachable site within " + e.Within.String() + " of " + e.Center
		return r
	}
	sort.SliceStable(cands, func(a, b int) bool { return cands[a].d < cands[b].d })
	r.targets = make([]Target, 0, len(cands))
	for i, c := range cands {
		r.targets = append(r.targets, pl.target(c.site, i == 0))
	}
	return r
}
