package forward

import (
	"errors"
	"maps"
	"net/http"
	"strings"

	"cheops/scope"
)

// Falling back at execution time.
//
// Design note — run it elsewhere only when it certainly ran nowhere. The
// planner chooses among the alternatives of ';' and '|' from membership,
// which lags: a site whose agent just stopped is still up, then suspect,
// for a few probes. When the chosen site cannot be reached when the
// request is sent — no peer address, no stream (refused, reset, dial
// timeout) — nothing of the request left this site (errNotDelivered),
// so the request is planned again with that site counted down, and runs on
// the next alternative, in the same request. A read falls back after any
// failure of the site (reading twice is harmless). A write falls back
// only after errNotDelivered: once its bytes may have reached a site, the
// outcome there is unknown and the answer says so (504 outcome_unknown);
// it is never sent a second time. The answer names the sites it fell back
// from, and why, in HeaderFallback; X-Cheops-Site names the one that ran it.

// HeaderFallback lists, on an answer, the sites the request was not run
// on although its plan chose them, and why: "c: no stream: …; d: …".
const HeaderFallback = "X-Cheops-Fallback"

// HeaderAvoid tells the site a request is handed to (a coordinator) the
// sites this one could not reach for it, comma-separated: that site plans
// it as if they were down, or it would choose them again.
const HeaderAvoid = "X-Cheops-Avoid"

// errNotDelivered marks a failure to reach a site before any byte of the
// request was sent: the request did not run there.
var errNotDelivered = errors.New("not delivered")

// withDown returns a copy of view in which the given sites are down:
// what the planner would have seen had membership known. Pure.
func withDown(view scope.View, down []string) scope.View {
	if len(down) == 0 {
		return view
	}
	out := scope.View{Local: view.Local, Sites: maps.Clone(view.Sites)}
	for _, s := range down {
		if info, ok := out.Sites[s]; ok {
			info.State = scope.Down
			out.Sites[s] = info
		}
	}
	return out
}

// fallback is one site a request could not run on.
type fallback struct{ site, reason string }

// failedSites lists the sites a request fell back from.
func (req *request) failedSites() []string {
	out := make([]string, 0, len(req.fellBack))
	for _, fb := range req.fellBack {
		out = append(out, fb.site)
	}
	return out
}

// fallbackHeader formats req.fellBack for HeaderFallback.
func (req *request) fallbackHeader() string {
	parts := make([]string, 0, len(req.fellBack))
	for _, fb := range req.fellBack {
		reason := strings.NewReplacer("\r", " ", "\n", " ", ";", ",").Replace(fb.reason)
		if len(reason) > 200 {
			reason = reason[:200] + "…"
		}
		parts = append(parts, fb.site+": "+reason)
	}
	return strings.Join(parts, "; ")
}

// fallBack records that site could not run req, and why, on the request
// and in the answer's HeaderFallback.
func (f *Forwarder) fallBack(w http.ResponseWriter, req *request, site string, err error) {
	req.fellBack = append(req.fellBack, fallback{site: site, reason: err.Error()})
	w.Header().Set(HeaderFallback, req.fallbackHeader())
}

// avoided reads HeaderAvoid from a member site's request.
func avoided(h http.Header, from string) []fallback {
	var out []fallback
	for _, s := range strings.Split(h.Get(HeaderAvoid), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, fallback{site: s, reason: "unreachable from " + from})
		}
	}
	return out
}

// replan places req again, now with more sites it fell back from.
// ok is false when no site can run it then.
func (f *Forwarder) replan(req *request) (*scope.Plan, bool) {
	next, err := f.plan(req)
	if err != nil {
		return nil, false
	}
	for _, t := range next.Targets {
		if t.Reachable {
			return next, true
		}
	}
	return nil, false
}

// undelivered reports results that all failed before their request left
// this site: the request ran nowhere.
func undelivered(results map[string]result) bool {
	for _, r := range results {
		if !errors.Is(r.err, errNotDelivered) {
			return false
		}
	}
	return len(results) > 0
}
