package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// The binding table alone: which claims it accepts, refuses or binds.
func TestBindingTable(t *testing.T) {
	self, p, b, r, x := peer.ID("self"), peer.ID("P"), peer.ID("B"), peer.ID("R"), peer.ID("X")
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	table, overridden, stale := newBindingTable(
		Binding{Site: "paris", Peer: self, Source: BoundSelf},
		map[string]peer.ID{"berlin": b},
		[]Binding{
			{Site: "rome", Peer: r, Since: since},   // kept
			{Site: "berlin", Peer: x, Since: since}, // the configuration says otherwise
			{Site: "paris", Peer: p, Since: since},  // this site's own name
		})
	if !stale || len(overridden) != 2 {
		t.Fatalf("overridden %v, stale %v: want berlin and paris dropped", overridden, stale)
	}
	for _, tc := range []struct {
		site string
		peer peer.ID
		want claimVerdict
		why  string // in the reason of a refusal
	}{
		{"paris", self, claimBound, ""},
		{"paris", p, claimRefused, "(this site)"},
		{"berlin", b, claimBound, ""},
		{"berlin", x, claimRefused, "trust configuration"},
		{"rome", r, claimBound, ""},
		{"rome", x, claimRefused, "first claim, 2025-01-02T03:04:05Z"},
		{"oslo", b, claimRefused, "peer is bound to site berlin"},
		{"oslo", r, claimRefused, "peer is bound to site rome"},
		{"oslo", x, claimNew, ""},
	} {
		got, why := table.check(tc.site, tc.peer)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%s claimed by %s: %v %q, want %v %q", tc.site, tc.peer, got, why, tc.want, tc.why)
		}
	}
	for site, want := range map[string]error{"paris": ErrSelfBinding, "berlin": ErrBoundByConfig, "oslo": ErrNotBound} {
		if _, err := table.remove(site); !errors.Is(err, want) {
			t.Errorf("remove %s: %v, want %v", site, err, want)
		}
	}
	if got, err := table.remove("rome"); err != nil || got.Peer != r {
		t.Fatalf("remove rome: %+v %v", got, err)
	}
	if v, _ := table.check("rome", x); v != claimNew {
		t.Fatalf("rome after remove: %v, want a new claim", v)
	}
	// Nothing changed on disk: nothing to rewrite.
	if _, _, stale := newBindingTable(Binding{Site: "paris", Peer: self, Source: BoundSelf}, nil,
		[]Binding{{Site: "rome", Peer: r, Since: since}}); stale {
		t.Fatal("an unchanged list is stale")
	}
}

// A first claim is pending until written: its twin waits for the same
// write, a rival claim on the name or by the peer is refused, and nothing
// is bound until the write succeeds.
func TestBindingTablePending(t *testing.T) {
	self, p, x := peer.ID("self"), peer.ID("P"), peer.ID("X")
	table, _, _ := newBindingTable(Binding{Site: "paris", Peer: self, Source: BoundSelf}, nil, nil)
	rome := Binding{Site: "rome", Peer: p, Source: BoundByFirstClaim}
	table.propose(rome)
	for _, tc := range []struct {
		site string
		peer peer.ID
		want claimVerdict
	}{
		{"rome", p, claimPending},
		{"rome", x, claimRefused},
		{"oslo", p, claimRefused},
		{"oslo", x, claimNew},
	} {
		if got, why := table.check(tc.site, tc.peer); got != tc.want {
			t.Errorf("%s claimed by %s while rome is pending: %v %q, want %v", tc.site, tc.peer, got, why, tc.want)
		}
	}
	if len(table.learned()) != 0 || len(table.proposed()) != 1 {
		t.Fatalf("pending claim: learned %v, proposed %v", table.learned(), table.proposed())
	}
	table.settle(table.proposed(), false) // the write failed
	if v, _ := table.check("rome", p); v != claimNew {
		t.Fatalf("after a failed write: %v, want a new claim", v)
	}
	table.propose(rome)
	table.settle(table.proposed(), true)
	if v, _ := table.check("rome", p); v != claimBound || len(table.proposed()) != 0 {
		t.Fatalf("after the write: %v, pending %v", v, table.proposed())
	}
}

// Claims that arrive together are written together: all bound, all on
// disk, in fewer writes than claims.
func TestConcurrentClaimsShareWrites(t *testing.T) {
	c := newCluster(t, "paris")
	paris := c.start("paris")
	const claims = 40
	var ids []peer.ID
	for i := range claims {
		_, id, err := LoadIdentity(filepath.Join(t.TempDir(), fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var wg sync.WaitGroup
	refused := make(chan string, claims)
	for i, id := range ids {
		wg.Go(func() {
			if site := fmt.Sprintf("s%02d", i); !paris.claim(site, id) {
				refused <- site
			}
		})
	}
	wg.Wait()
	close(refused)
	for site := range refused {
		t.Errorf("claim of %s refused", site)
	}
	bs, err := loadBindings(c.dirs["paris"])
	if err != nil || len(bs) != claims {
		t.Fatalf("on disk: %d bindings, %v; want %d", len(bs), err, claims)
	}
	paris.persistMu.Lock()
	writes := paris.bindingWrites
	paris.persistMu.Unlock()
	t.Logf("%d claims, %d writes", claims, writes)
	if writes >= claims {
		t.Fatalf("%d claims took %d writes: none shared", claims, writes)
	}
}

// A closed node writes nothing into its data directory: a record that
// libp2p hands to a handler after the node closed (host.Close does not
// wait for stream handlers) binds nothing, and Forget refuses. Before,
// such a write could land while the directory was being removed.
func TestClosedNodeWritesNoBinding(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	paris := c.start("paris")
	if !paris.claim("oslo", c.ids["berlin"]) {
		t.Fatal("claim of oslo refused on an open node")
	}
	c.stopNode(paris)
	if paris.claim("rome", c.ids["rome"]) {
		t.Error("a closed node bound rome")
	}
	if _, err := paris.Forget("oslo"); !errors.Is(err, ErrClosed) {
		t.Errorf("forget on a closed node: %v, want ErrClosed", err)
	}
	bs, err := loadBindings(c.dirs["paris"])
	if err != nil || len(bs) != 1 || bs[0].Site != "oslo" {
		t.Fatalf("on disk after close: %+v %v; want oslo alone", bs, err)
	}
	entries, err := os.ReadDir(c.dirs["paris"])
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("a temporary file was left in the data directory: %s", e.Name())
		}
	}
}

func TestBindingsFile(t *testing.T) {
	dir := t.TempDir()
	if bs, err := loadBindings(dir); err != nil || bs != nil {
		t.Fatalf("no file: %v %v", bs, err)
	}
	_, id, err := LoadIdentity(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Binding{{Site: "rome", Peer: id, Source: BoundByFirstClaim, Since: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}}
	if err := saveBindings(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadBindings(dir)
	if err != nil || len(got) != 1 || got[0] != want[0] {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, want)
	}
	for name, content := range map[string]string{
		"not JSON":      "rome",
		"bad peer":      `{"rome": {"peer": "nobody"}}`,
		"bad name":      fmt.Sprintf(`{"9rome": {"peer": %q}}`, id),
		"peer twice":    fmt.Sprintf(`{"rome": {"peer": %q}, "oslo": {"peer": %q}}`, id, id),
		"not an object": `[]`,
	} {
		os.WriteFile(filepath.Join(dir, BindingsFile), []byte(content), 0o600)
		if _, err := loadBindings(dir); !errors.Is(err, ErrIdentity) {
			t.Errorf("%s: %v, want ErrIdentity", name, err)
		}
	}
}

// startNode starts a node of the cluster with its configuration changed
// by mutate.
func (c *cluster) startNode(site, dir string, mutate func(*Config), peers ...string) *Node {
	c.t.Helper()
	cfg := fastConfig(site, dir, c.trust(), peers...)
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := New(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", site, err)
	}
	c.nodes[site+"@"+dir] = n
	return n
}

func (c *cluster) stopNode(n *Node) {
	for k, m := range c.nodes {
		if m == n {
			delete(c.nodes, k)
		}
	}
	n.Close()
}

// refusedAt waits until n reports claimant's refused claim on site.
func refusedAt(t *testing.T, n *Node, site string, claimant peer.ID) {
	t.Helper()
	eventually(t, 10*time.Second, n.Site()+" refuses "+claimant.String()+"'s claim on "+site, func() error {
		for _, cf := range n.Conflicts() {
			if cf.Site == site && cf.Claimant == claimant && cf.Count > 0 && n.RefusedClaims()[site] > 0 {
				return nil
			}
		}
		return fmt.Errorf("conflicts %+v", n.Conflicts())
	})
}

// boundTo checks that n maps site to want, or to nothing, never to
// another peer, and never maps the impostor to a site.
func boundTo(n *Node, site string, want, impostor peer.ID) error {
	if p, ok := n.PeerOf(site); ok && p != want {
		return fmt.Errorf("%s maps %s to %s, want %s", n.Site(), site, p, want)
	}
	if s, ok := n.SiteOf(impostor); ok {
		return fmt.Errorf("%s maps the impostor to site %s", n.Site(), s)
	}
	return nil
}

// A first claim is persisted: after a restart with the real paris down and
// an impostor (trusted, started as paris) up, berlin still refuses it; the
// operator's Forget lets the next claim bind the name.
func TestFirstClaimSurvivesRestart(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "impostor")
	paris := c.startNode("paris", c.dirs["paris"], nil)
	berlin := c.startNode("berlin", c.dirs["berlin"], nil, paris.Addrs()[0])
	parisID, impostorID := c.ids["paris"], c.ids["impostor"]
	eventually(t, 10*time.Second, "berlin sees paris", func() error { return sees(berlin, "paris", scope.Up) })
	if bs := berlin.Bindings(); len(bs) != 2 || bs[1].Site != "paris" || bs[1].Source != BoundByFirstClaim || bs[1].Peer != parisID {
		t.Fatalf("berlin's bindings: %+v", bs)
	}
	c.stopNode(paris)
	c.stopNode(berlin)

	// The impostor first, then berlin: paris is down all along.
	impostor := c.startNode("paris", c.dirs["impostor"], nil)
	berlin = c.startNode("berlin", c.dirs["berlin"], nil, impostor.Addrs()[0])
	refusedAt(t, berlin, "paris", impostorID)
	if err := boundTo(berlin, "paris", parisID, impostorID); err != nil {
		t.Fatal(err)
	}
	if _, ok := berlin.View().Sites["paris"]; ok {
		t.Fatal("berlin plans with a paris while only the impostor claims it")
	}
	// The real paris comes back: berlin takes it, the impostor stays out.
	paris = c.startNode("paris", c.dirs["paris"], nil, berlin.Addrs()[0])
	eventually(t, 10*time.Second, "berlin sees the real paris", func() error {
		if err := boundTo(berlin, "paris", parisID, impostorID); err != nil {
			return err
		}
		return sees(berlin, "paris", scope.Up)
	})
	for _, s := range berlin.Sites() {
		if s.Site == "paris" && (s.Peer != parisID || s.Binding != BoundByFirstClaim || len(s.Conflicts) != 1 || s.Conflicts[0] != impostorID) {
			t.Fatalf("berlin's row for paris: %+v", s)
		}
	}

	// Only the operator rebinds: with the real paris gone for good,
	// forgetting the name lets the next claimant have it.
	c.stopNode(paris)
	for site, want := range map[string]error{"berlin": ErrSelfBinding, "oslo": ErrNotBound} {
		if _, err := berlin.Forget(site); !errors.Is(err, want) {
			t.Errorf("forget %s: %v, want %v", site, err, want)
		}
	}
	if b, err := berlin.Forget("paris"); err != nil || b.Peer != parisID {
		t.Fatalf("forget paris: %+v %v", b, err)
	}
	eventually(t, 10*time.Second, "the next claim binds paris", func() error {
		if p, ok := berlin.PeerOf("paris"); !ok || p != impostorID {
			return fmt.Errorf("berlin maps paris to %q", p)
		}
		return nil
	})
	if len(berlin.Conflicts()) != 0 {
		t.Fatalf("conflicts left after forget: %+v", berlin.Conflicts())
	}
	if bs, err := loadBindings(c.dirs["berlin"]); err != nil || len(bs) != 1 || bs[0].Peer != impostorID {
		t.Fatalf("persisted after forget and a new claim: %+v %v", bs, err)
	}
}

// A name bound by the trust configuration is refused to any other peer
// from a site's very first start, before the real site was ever seen; the
// configuration cannot be forgotten, and an agent started with another
// site's name refuses to start.
func TestConfiguredBinding(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "impostor")
	parisID, berlinID, impostorID := c.ids["paris"], c.ids["berlin"], c.ids["impostor"]
	bind := func(cfg *Config) {
		cfg.Sites = map[string]peer.ID{"paris": parisID, "berlin": berlinID}
		cfg.Trust = []peer.ID{impostorID} // trusted, bound to no name
	}
	impostor := c.startNode("paris", c.dirs["impostor"], nil)
	berlin := c.startNode("berlin", c.dirs["berlin"], bind, impostor.Addrs()[0])
	refusedAt(t, berlin, "paris", impostorID)
	for _, cf := range berlin.Conflicts() {
		if cf.Holder != parisID || !strings.Contains(cf.Reason, "trust configuration") {
			t.Fatalf("conflict %+v: want paris held by %s by the trust configuration", cf, parisID)
		}
	}
	paris := c.startNode("paris", c.dirs["paris"], bind, berlin.Addrs()[0])
	eventually(t, 10*time.Second, "berlin and the real paris see each other", func() error {
		if err := boundTo(berlin, "paris", parisID, impostorID); err != nil {
			return err
		}
		if err := sees(berlin, "paris", scope.Up); err != nil {
			return err
		}
		return sees(paris, "berlin", scope.Up)
	})
	if _, err := berlin.Forget("paris"); !errors.Is(err, ErrBoundByConfig) {
		t.Fatalf("forget a configured binding: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.dirs["berlin"], BindingsFile)); !os.IsNotExist(err) {
		t.Fatalf("configured bindings were persisted: %v", err)
	}

	// The impostor, given the same trust configuration, does not start.
	cfg := fastConfig("paris", c.dirs["impostor"], nil)
	c.stopNode(impostor)
	bind(&cfg)
	if _, err := New(context.Background(), cfg); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "another site's name") {
		t.Fatalf("impostor with the trust configuration: %v", err)
	}
	cfg.Site = "oslo"
	cfg.Sites["oslo"] = berlinID // two names for one peer
	if err := cfg.Validate(); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("one peer bound to two names: %v", err)
	}
}
