package agent

import (
	"encoding/json"
	"net/http"
	"time"

	"cheops/scope"
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
	Self     bool   `json:"self"`
	// Conflicts are the peer ids that also claimed this site's name and
	// were refused (the first claim wins). Non-empty means an operator
	// must fix a misconfiguration.
	Conflicts []string `json:"conflicts,omitempty"`
}

func (a *Agent) sites(w http.ResponseWriter, _ *http.Request) {
	out := []SiteJSON{}
	for _, s := range a.node.Sites() {
		j := SiteJSON{Site: s.Site, Peer: s.Peer.String(), State: s.State.String(), RTTms: float64(s.RTT) / float64(time.Millisecond), Self: s.Self}
		if !s.LastSeen.IsZero() {
			j.LastSeen = s.LastSeen.Format(time.RFC3339)
		}
		for _, p := range s.Conflicts {
			j.Conflicts = append(j.Conflicts, p.String())
		}
		out = append(out, j)
	}
	WriteJSON(w, http.StatusOK, out)
}

// HealthJSON is the body of GET /v1/health.
type HealthJSON struct {
	Status    string         `json:"status"` // "ok", or "conflict" while a site name is claimed twice
	Site      string         `json:"site"`
	Peer      string         `json:"peer"`
	Addrs     []string       `json:"addrs"`
	Started   string         `json:"started"`
	Sites     map[string]int `json:"sites"` // known sites by state, this one included
	Conflicts []ConflictJSON `json:"conflicts,omitempty"`
}

// ConflictJSON is a refused claim on a site name.
type ConflictJSON struct {
	Site     string `json:"site"`
	Holder   string `json:"holder"`
	Claimant string `json:"claimant"`
	At       string `json:"at"`
}

func (a *Agent) health(w http.ResponseWriter, _ *http.Request) {
	h := HealthJSON{Status: "ok", Site: a.node.Site(), Peer: a.node.ID().String(), Addrs: a.node.Addrs(), Sites: map[string]int{}}
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
		h.Conflicts = append(h.Conflicts, ConflictJSON{Site: c.Site, Holder: c.Holder.String(), Claimant: c.Claimant.String(), At: c.At.Format(time.RFC3339)})
	}
	// A conflict is reported, not fatal: the agent serves on, so 200.
	WriteJSON(w, http.StatusOK, h)
}

// ErrorJSON is the body of every error answer of the API.
type ErrorJSON struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// WriteError answers with an error in the API's format: status, a short
// machine-readable code ("bad_scope", "not_found", …) and a message.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, ErrorJSON{Error: msg, Code: code})
}

// WriteJSON answers with v encoded as indented JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// catalogStatus serves GET /v1/catalog/status: per replication group its
// members, heads, height, fetches in progress, and the last heads
// comparison with each member.
func (a *Agent) catalogStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.crdt.Status(r.Context()))
}
