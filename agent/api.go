package agent

import (
	"errors"
	"net/http"
	"time"

	"cheops/errcode"
	"cheops/node"
	"cheops/scope"
	"cheops/version"
)

// SiteJSON is one element of GET /v1/sites.
type SiteJSON struct {
	Site  string `json:"site"`
	Peer  string `json:"peer"`
	State string `json:"state"` // up, suspect, down, or unknown before the first probe
	// RTTms is the smoothed probe round trip, 0 for this site and for a
	// site never reached.
	RTTms float64 `json:"rtt_ms"`
	// LastSeen is when the site last answered a probe (RFC 3339); absent
	// for a site never reached.
	LastSeen string `json:"last_seen,omitempty"`
	// Since is when this site last saw the site's state change (RFC 3339
	// with nanoseconds); absent when it has not changed since this agent
	// started.
	Since string `json:"since,omitempty"`
	Self  bool   `json:"self"`
	// Conflicts are the peer ids that also claimed this site's name and
	// were refused (the name is bound to Peer). Non-empty means an
	// operator must look: a misconfiguration or an impostor.
	Conflicts []string `json:"conflicts,omitempty"`
	// Binding says what binds the name to Peer: "self", "config" (the
	// trust configuration) or "first-claim" (persisted in the data
	// directory; `cheops sites forget NAME` removes it).
	Binding string `json:"binding,omitempty"`
}

func (a *Agent) sites(w http.ResponseWriter, _ *http.Request) {
	out := []SiteJSON{}
	for _, s := range a.node.Sites() {
		j := SiteJSON{Site: s.Site, Peer: s.Peer.String(), State: s.State.String(), RTTms: float64(s.RTT) / float64(time.Millisecond), Self: s.Self, Binding: s.Binding}
		if !s.LastSeen.IsZero() {
			j.LastSeen = s.LastSeen.Format(time.RFC3339)
		}
		if !s.Since.IsZero() {
			j.Since = s.Since.Format(time.RFC3339Nano)
		}
		for _, p := range s.Conflicts {
			j.Conflicts = append(j.Conflicts, p.String())
		}
		out = append(out, j)
	}
	errcode.WriteJSON(w, http.StatusOK, out)
}

// HealthJSON is the body of GET /v1/health.
type HealthJSON struct {
	Status  string         `json:"status"` // "ok", or "conflict" while a peer's claim on a site name is refused
	Version string         `json:"version"`
	Site    string         `json:"site"`
	Peer    string         `json:"peer"`
	Addrs   []string       `json:"addrs"`
	Started string         `json:"started"`
	Sites   map[string]int `json:"sites"` // known sites by state, this one included
	// Conflicts are the refused claims on site names, oldest first.
	Conflicts []ConflictJSON `json:"conflicts,omitempty"`
}

// ConflictJSON is a refused claim on a site name: Claimant claimed Site,
// which is bound to Holder (empty when the name is free but the claimant
// is bound to another name), Count times between At and Last.
type ConflictJSON struct {
	Site     string `json:"site"`
	Holder   string `json:"holder,omitempty"`
	Claimant string `json:"claimant"`
	Reason   string `json:"reason"`
	Count    int    `json:"count"`
	At       string `json:"at"`
	Last     string `json:"last"`
}

func (a *Agent) health(w http.ResponseWriter, _ *http.Request) {
	h := HealthJSON{Status: "ok", Version: version.String(), Site: a.node.Site(), Peer: a.node.ID().String(), Addrs: a.node.Addrs(), Sites: map[string]int{}}
	for _, st := range []scope.State{scope.Up, scope.Suspect, scope.Down, scope.Unknown} {
		h.Sites[st.String()] = 0
	}
	for _, s := range a.node.Sites() {
		h.Sites[s.State.String()]++
		if s.Self {
			h.Started = s.Started.Format(time.RFC3339)
		}
	}
	for _, c := range a.node.Conflicts() {
		h.Status = "conflict"
		j := ConflictJSON{Site: c.Site, Claimant: c.Claimant.String(), Reason: c.Reason, Count: c.Count,
			At: c.At.Format(time.RFC3339), Last: c.Last.Format(time.RFC3339)}
		if c.Holder != "" {
			j.Holder = c.Holder.String()
		}
		h.Conflicts = append(h.Conflicts, j)
	}
	// A conflict is reported, not fatal: the agent serves on, so 200.
	errcode.WriteJSON(w, http.StatusOK, h)
}

// BindingJSON is a site name bound to a peer id: the answer of
// POST /v1/sites/{site}/forget (the binding removed).
type BindingJSON struct {
	Site   string `json:"site"`
	Peer   string `json:"peer"`
	Source string `json:"source"` // "self", "config" or "first-claim"
	Since  string `json:"since,omitempty"`
}

// forget serves POST /v1/sites/{site}/forget: the operator removes a
// first-claim binding so that the next peer to claim the name gets it.
func (a *Agent) forget(w http.ResponseWriter, r *http.Request) {
	site := r.PathValue("site")
	if err := scope.CheckName("site", site); err != nil {
		errcode.Write(w, http.StatusBadRequest, errcode.BadInput, err.Error())
		return
	}
	b, err := a.node.Forget(site)
	switch {
	case err == nil:
		a.log.Warn("operator forgot a site binding", "site", site, "peer", b.Peer)
		errcode.WriteJSON(w, http.StatusOK, BindingJSON{Site: b.Site, Peer: b.Peer.String(), Source: b.Source, Since: b.Since.Format(time.RFC3339)})
	case errors.Is(err, node.ErrNotBound):
		errcode.Write(w, http.StatusBadRequest, errcode.UnknownSite, err.Error())
	case errors.Is(err, node.ErrBoundByConfig):
		errcode.Write(w, http.StatusBadRequest, errcode.BoundByConfig, err.Error())
	case errors.Is(err, node.ErrSelfBinding):
		errcode.Write(w, http.StatusBadRequest, errcode.BadInput, err.Error())
	default:
		errcode.Write(w, http.StatusInternalServerError, errcode.Internal, err.Error())
	}
}

// catalogStatus serves GET /v1/catalog/status: per replication group its
// members, heads, height, fetches in progress, and the last heads
// comparison with each member.
func (a *Agent) catalogStatus(w http.ResponseWriter, r *http.Request) {
	errcode.WriteJSON(w, http.StatusOK, a.crdt.Status(r.Context()))
}
