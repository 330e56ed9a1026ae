package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// Design note — identity is configuration, not first come.
//
// A site name routes requests and catalog data, so the peer id behind a
// name must never change by itself. Two sources bind a name to a peer id:
//
//   - the trust configuration (Config.Sites: `--trust NAME=PEERID`, or a
//     trust file line `NAME PEERID`): authoritative, never overridden;
//   - for names the configuration leaves open (bare peer ids, the format
//     of earlier versions), the first claim this site accepts, written to
//     BindingsFile in the data directory before it is used, so that it
//     survives restarts.
//
// A record that claims a name bound to another peer, or that comes from a
// peer bound to another name, is refused (and reported as a Conflict): no
// rename, no takeover, whoever restarts in whatever order. Only an
// operator changes a binding: by editing the trust configuration (which
// wins over a persisted binding at the next start) or with Node.Forget
// (`cheops sites forget NAME`), which removes a persisted one.
//
// The table below is pure: it decides from its maps alone; Node persists
// and reports.
//
// A first claim is proposed (pending) before it is written and bound
// after: a binding is never used before it is on disk, and the claims
// that arrive while one write runs are written together by the next
// (Node.claim), so that a site joining a hundred others writes the file
// a few times, not a hundred.

// BindingsFile keeps, in the data directory, the site names bound by first
// claim: a JSON object {"NAME": {"peer": "12D3…", "since": "RFC 3339"}}.
// Delete an entry (agent stopped) or run `cheops sites forget NAME` (agent
// running) to let another peer claim the name.
const BindingsFile = "sites.json"

// Where a binding comes from.
const (
	BoundByConfig     = "config"      // the trust configuration
	BoundByFirstClaim = "first-claim" // the first claim accepted, persisted
	BoundSelf         = "self"        // this site: its --site and identity
)

// Binding is one site name bound to one peer id.
type Binding struct {
	Site   string    `json:"site"`
	Peer   peer.ID   `json:"peer"`
	Source string    `json:"source"`         // BoundByConfig, BoundByFirstClaim or BoundSelf
	Since  time.Time `json:"since,omitzero"` // when a first claim was accepted
}

// Errors of Forget.
var (
	// ErrNotBound: no peer is bound to the name by first claim.
	ErrNotBound = errors.New("node: site name not bound")
	// ErrBoundByConfig: the trust configuration binds the name; only a
	// change of the configuration (and a restart) rebinds it.
	ErrBoundByConfig = errors.New("node: site name bound by the trust configuration")
	// ErrSelfBinding: a site cannot forget its own name.
	ErrSelfBinding = errors.New("node: a site cannot forget its own name")
	// ErrClosed: the node is closed; its data directory is no longer
	// written.
	ErrClosed = errors.New("node: closed")
)

// claimVerdict is what the table says of a claim.
type claimVerdict int

const (
	claimBound   claimVerdict = iota // the name is already bound to the peer
	claimNew                         // name and peer are both free: bind them
	claimRefused                     // see the reason
	claimPending                     // this very binding is proposed, not yet written
)

// bindingTable maps site names to peer ids, one to one. Not safe for
// concurrent use: Node guards it.
type bindingTable struct {
	byName map[string]Binding
	byPeer map[peer.ID]string
	// pending holds the first claims proposed and not yet written (by
	// name, and the name by peer); they bind nothing until commit.
	pending     map[string]Binding
	pendingPeer map[peer.ID]string
}

// newBindingTable builds the table from this site's own binding, the
// configured ones and the persisted ones. This site and the configuration
// win: a persisted binding that disagrees with them (same name, or same
// peer under another name) is dropped and returned in overridden, for the
// caller to log; stale reports whether the persisted list must be
// rewritten (something was dropped, even a binding the configuration now
// repeats).
func newBindingTable(self Binding, config map[string]peer.ID, persisted []Binding) (t *bindingTable, overridden []Binding, stale bool) {
	t = &bindingTable{byName: map[string]Binding{}, byPeer: map[peer.ID]string{},
		pending: map[string]Binding{}, pendingPeer: map[peer.ID]string{}}
	t.put(self)
	for _, name := range slices.Sorted(maps.Keys(config)) {
		if name != self.Site {
			t.put(Binding{Site: name, Peer: config[name], Source: BoundByConfig})
		}
	}
	for _, b := range persisted {
		_, nameTaken := t.byName[b.Site]
		_, peerTaken := t.byPeer[b.Peer]
		if nameTaken || peerTaken {
			stale = true
			if t.byName[b.Site].Peer != b.Peer {
				overridden = append(overridden, b)
			}
			continue
		}
		b.Source = BoundByFirstClaim
		t.put(b)
	}
	return t, overridden, stale
}

func (t *bindingTable) put(b Binding) {
	t.byName[b.Site] = b
	t.byPeer[b.Peer] = b.Site
}

// check decides a claim of site by p, without changing the table.
func (t *bindingTable) check(site string, p peer.ID) (claimVerdict, string) {
	b, named := t.byName[site]
	switch {
	case named && b.Peer == p:
		return claimBound, ""
	case named:
		return claimRefused, fmt.Sprintf("the name is bound to %s (%s)", b.Peer, describeSource(b))
	}
	if other, ok := t.byPeer[p]; ok {
		return claimRefused, fmt.Sprintf("the peer is bound to site %s (%s)", other, describeSource(t.byName[other]))
	}
	if b, ok := t.pending[site]; ok {
		if b.Peer == p {
			return claimPending, ""
		}
		return claimRefused, fmt.Sprintf("the name is being bound to %s (first claim)", b.Peer)
	}
	if other, ok := t.pendingPeer[p]; ok {
		return claimRefused, fmt.Sprintf("the peer is being bound to site %s (first claim)", other)
	}
	return claimNew, ""
}

// propose records a new first claim (check said claimNew) as pending.
func (t *bindingTable) propose(b Binding) {
	t.pending[b.Site] = b
	t.pendingPeer[b.Peer] = b.Site
}

// proposed lists the pending claims, by name.
func (t *bindingTable) proposed() []Binding {
	var out []Binding
	for _, name := range slices.Sorted(maps.Keys(t.pending)) {
		out = append(out, t.pending[name])
	}
	return out
}

// settle ends pending claims: bound when written (commit), dropped when
// the write failed.
func (t *bindingTable) settle(bs []Binding, commit bool) {
	for _, b := range bs {
		if t.pending[b.Site] != b {
			continue
		}
		delete(t.pending, b.Site)
		delete(t.pendingPeer, b.Peer)
		if commit {
			t.put(b)
		}
	}
}

func describeSource(b Binding) string {
	switch b.Source {
	case BoundByConfig:
		return "trust configuration"
	case BoundSelf:
		return "this site"
	default:
		return "first claim, " + b.Since.Format(time.RFC3339)
	}
}

// learned lists the bindings made by first claim, by name.
func (t *bindingTable) learned() []Binding {
	var out []Binding
	for _, name := range slices.Sorted(maps.Keys(t.byName)) {
		if b := t.byName[name]; b.Source == BoundByFirstClaim {
			out = append(out, b)
		}
	}
	return out
}

// all lists every binding, by name.
func (t *bindingTable) all() []Binding {
	var out []Binding
	for _, name := range slices.Sorted(maps.Keys(t.byName)) {
		out = append(out, t.byName[name])
	}
	return out
}

// remove deletes a first-claim binding.
func (t *bindingTable) remove(site string) (Binding, error) {
	b, ok := t.byName[site]
	switch {
	case !ok:
		return b, fmt.Errorf("%w: no peer is bound to %q", ErrNotBound, site)
	case b.Source == BoundSelf:
		return b, fmt.Errorf("%w (%s)", ErrSelfBinding, site)
	case b.Source == BoundByConfig:
		return b, fmt.Errorf("%w: %s is bound to %s; edit --trust/--trust-file and restart to change it", ErrBoundByConfig, site, b.Peer)
	}
	delete(t.byName, site)
	delete(t.byPeer, b.Peer)
	return b, nil
}

// persistedBinding is one entry of BindingsFile.
type persistedBinding struct {
	Peer  string    `json:"peer"`
	Since time.Time `json:"since"`
}

// loadBindings reads BindingsFile from dir; a missing file is no bindings.
func loadBindings(dir string) ([]Binding, error) {
	path := filepath.Join(dir, BindingsFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: bindings: %w", ErrIdentity, err)
	}
	var m map[string]persistedBinding
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: bindings %s: %w (fix or remove the file: it only holds first-claim bindings)", ErrIdentity, path, err)
	}
	var out []Binding
	seen := map[peer.ID]string{}
	for _, name := range slices.Sorted(maps.Keys(m)) {
		e := m[name]
		p, err := peer.Decode(e.Peer)
		if err != nil || scope.CheckName("site", name) != nil {
			return nil, fmt.Errorf("%w: bindings %s: entry %q: bad site name or peer id %q", ErrIdentity, path, name, e.Peer)
		}
		if other, dup := seen[p]; dup {
			return nil, fmt.Errorf("%w: bindings %s: peer %s bound to both %s and %s", ErrIdentity, path, p, other, name)
		}
		seen[p] = name
		out = append(out, Binding{Site: name, Peer: p, Source: BoundByFirstClaim, Since: e.Since})
	}
	return out, nil
}

// saveBindings writes the first-claim bindings to BindingsFile, atomically.
func saveBindings(dir string, bs []Binding) error {
	m := map[string]persistedBinding{}
	for _, b := range bs {
		m[b.Site] = persistedBinding{Peer: b.Peer.String(), Since: b.Since.UTC()}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("bindings: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, BindingsFile), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("bindings: %w", err)
	}
	return nil
}
