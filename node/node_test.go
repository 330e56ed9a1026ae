package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// fastConfig probes ten times a second so that tests see state changes
// within a second or two.
func fastConfig(site, dir string, trust []peer.ID, peers ...string) Config {
	c := DefaultConfig()
	c.Site, c.DataDir, c.Trust, c.Peers = site, dir, trust, peers
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 500 * time.Millisecond
	c.SuspectAfter, c.DownAfter = 2, 4
	c.AnnounceInterval = 200 * time.Millisecond
	c.MaxRedialBackoff = 400 * time.Millisecond
	c.Logger = testLogger
	return c
}

// testLogger keeps warnings and errors (refused peers, conflicts) in the
// test output and drops the chatter.
var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// cluster prepares identities for the named sites so that each trusts the
// others from the start.
type cluster struct {
	t     *testing.T
	dirs  map[string]string
	ids   map[string]peer.ID
	nodes map[string]*Node
}

func newCluster(t *testing.T, sites ...string) *cluster {
	c := &cluster{t: t, dirs: map[string]string{}, ids: map[string]peer.ID{}, nodes: map[string]*Node{}}
	for _, s := range sites {
		dir := filepath.Join(t.TempDir(), s)
		_, id, err := LoadIdentity(dir)
		if err != nil {
			t.Fatal(err)
		}
		c.dirs[s], c.ids[s] = dir, id
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.Close()
		}
	})
	return c
}

func (c *cluster) trust() []peer.ID {
	var out []peer.ID
	for _, id := range c.ids {
		out = append(out, id)
	}
	return out
}

func (c *cluster) start(site string, peers ...string) *Node {
	c.t.Helper()
	n, err := New(context.Background(), fastConfig(site, c.dirs[site], c.trust(), peers...))
	if err != nil {
		c.t.Fatalf("start %s: %v", site, err)
	}
	c.nodes[site] = n
	return n
}

func (c *cluster) stop(site string) {
	c.nodes[site].Close()
	delete(c.nodes, site)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sees(n *Node, site string, want scope.State) error {
	info, ok := n.View().Sites[site]
	if !ok {
		return fmt.Errorf("%s does not know %s", n.Site(), site)
	}
	if info.State != want {
		return fmt.Errorf("%s sees %s %v, want %v", n.Site(), site, info.State, want)
	}
	if want == scope.Up {
		if d, ok := n.View().RTT(n.Site(), site); !ok || d <= 0 {
			return fmt.Errorf("%s has no RTT to %s", n.Site(), site)
		}
	}
	return nil
}

func TestMembershipUpDownRestart(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome", "oslo")
	paris := c.start("paris")
	boot := paris.Addrs()[0]
	for _, s := range []string{"berlin", "rome", "oslo"} {
		c.start(s, boot)
	}
	all := []string{"paris", "berlin", "rome", "oslo"}
	began := time.Now()
	eventually(t, 15*time.Second, "every site sees every other up", func() error {
		for _, a := range all {
			for _, b := range all {
				if a != b {
					if err := sees(c.nodes[a], b, scope.Up); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	t.Logf("4 sites all up everywhere after %v", time.Since(began).Round(time.Millisecond))
	// berlin learned rome's RTT to oslo from rome's record.
	eventually(t, 5*time.Second, "RTTs between other sites", func() error {
		if _, ok := c.nodes["berlin"].View().RTT("rome", "oslo"); !ok {
			return fmt.Errorf("berlin knows no RTT between rome and oslo")
		}
		return nil
	})

	events, cancel := c.nodes["berlin"].Subscribe()
	defer cancel()
	romeID := c.ids["rome"]
	c.stop("rome")
	began = time.Now()
	cfg := fastConfig("x", "x", nil)
	// DownBound is the contract; 2 s more absorbs scheduling on a busy
	// machine under -race.
	bound := cfg.DownBound() + 2*time.Second
	eventually(t, bound, "rome down everywhere", func() error {
		for _, s := range []string{"paris", "berlin", "oslo"} {
			if err := sees(c.nodes[s], "rome", scope.Down); err != nil {
				return err
			}
		}
		return nil
	})
	t.Logf("stopped rome down everywhere after %v (bound %v)", time.Since(began).Round(time.Millisecond), cfg.DownBound())
	if err := changedSince(c.nodes["berlin"], "rome", began, time.Now()); err != nil {
		t.Error(err)
	}
	sawDown := false
	for !sawDown {
		select {
		case ev := <-events:
			sawDown = ev.Site == "rome" && ev.State == scope.Down
		case <-time.After(time.Second):
			t.Fatal("no down event for rome")
		}
	}

	rome := c.start("rome", boot)
	began = time.Now()
	if rome.ID() != romeID {
		t.Fatalf("rome restarted as %s, was %s", rome.ID(), romeID)
	}
	defer func() { t.Logf("restarted rome up everywhere after %v", time.Since(began).Round(time.Millisecond)) }()
	eventually(t, 15*time.Second, "rome up again everywhere", func() error {
		for _, s := range []string{"paris", "berlin", "oslo"} {
			if err := sees(c.nodes[s], "rome", scope.Up); err != nil {
				return err
			}
			if err := sees(rome, s, scope.Up); err != nil {
				return err
			}
		}
		return nil
	})
	if err := changedSince(c.nodes["berlin"], "rome", began, time.Now()); err != nil {
		t.Error(err)
	}
}

// changedSince checks that n reports the last change of site's state
// (SiteStatus.Since) between from and to.
func changedSince(n *Node, site string, from, to time.Time) error {
	for _, s := range n.Sites() {
		if s.Site == site {
			if s.Since.Before(from) || s.Since.After(to) {
				return fmt.Errorf("%s's state changed at %v, not between %v and %v", site, s.Since, from, to)
			}
			return nil
		}
	}
	return fmt.Errorf("%s unknown", site)
}

func TestUntrustedPeerRefused(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	paris := c.start("paris")
	c.start("berlin", paris.Addrs()[0])

	// mallory trusts everyone, but nobody trusts mallory.
	cfg := fastConfig("mallory", t.TempDir(), nil, paris.Addrs()[0])
	cfg.TrustAll = true
	mallory, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mallory.Close()
	info, _ := peer.AddrInfoFromString(paris.Addrs()[0])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mallory.Host().Connect(ctx, *info); err == nil {
		// The dialer may see the handshake succeed before the far side
		// gates it; the connection must not survive.
		eventually(t, 5*time.Second, "connection closed", func() error {
			if len(paris.Host().Network().ConnsToPeer(mallory.ID())) > 0 {
				return fmt.Errorf("paris still connected to mallory")
			}
			return nil
		})
	}
	eventually(t, 5*time.Second, "paris logged the refusal", func() error {
		if paris.Refused()[mallory.ID()] == 0 {
			return fmt.Errorf("no refusal recorded")
		}
		return nil
	})
	eventually(t, 5*time.Second, "berlin up at paris", func() error { return sees(paris, "berlin", scope.Up) })
	if _, ok := paris.View().Sites["mallory"]; ok {
		t.Fatal("paris lists the untrusted site")
	}
	if _, ok := paris.SiteOf(mallory.ID()); ok {
		t.Fatal("paris maps the untrusted peer to a site")
	}
}

func TestDuplicateSiteNameReported(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "impostor")
	paris := c.start("paris")
	berlin := c.start("berlin", paris.Addrs()[0])
	eventually(t, 10*time.Second, "berlin sees paris", func() error { return sees(berlin, "paris", scope.Up) })

	// A second peer claims the name "paris".
	cfg := fastConfig("paris", c.dirs["impostor"], c.trust(), berlin.Addrs()[0])
	impostor, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	eventually(t, 10*time.Second, "conflict reported at berlin", func() error {
		for _, cf := range berlin.Conflicts() {
			if cf.Site == "paris" && cf.Claimant == impostor.ID() && cf.Holder == paris.ID() {
				return nil
			}
		}
		return fmt.Errorf("conflicts: %+v", berlin.Conflicts())
	})
	if p, _ := berlin.PeerOf("paris"); p != paris.ID() {
		t.Fatalf("berlin maps paris to %s, want the first claimant %s", p, paris.ID())
	}
	// The conflict shows on paris's row of the membership table.
	for _, s := range berlin.Sites() {
		if s.Site == "paris" && (s.Peer != paris.ID() || len(s.Conflicts) != 1 || s.Conflicts[0] != impostor.ID()) {
			t.Fatalf("berlin's row for paris: %+v", s)
		}
	}
	// The impostor, which holds "paris" for itself, reports the real one.
	eventually(t, 10*time.Second, "conflict reported at the impostor", func() error {
		for _, cf := range impostor.Conflicts() {
			if cf.Site == "paris" && cf.Claimant == paris.ID() {
				return nil
			}
		}
		return fmt.Errorf("conflicts: %+v", impostor.Conflicts())
	})
	if _, ok := berlin.SiteOf(impostor.ID()); ok {
		t.Fatal("berlin maps the impostor to a site")
	}
}

func TestConfigValidate(t *testing.T) {
	good := fastConfig("paris", t.TempDir(), []peer.ID{"x"})
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no site":        func(c *Config) { c.Site = "" },
		"bad site":       func(c *Config) { c.Site = "par is" },
		"no data":        func(c *Config) { c.DataDir = "" },
		"bad listen":     func(c *Config) { c.Listen = []string{"/ip4/1.2.3/tcp/1"} },
		"bad peer":       func(c *Config) { c.Peers = []string{"/ip4/127.0.0.1/tcp/1"} },
		"no trust":       func(c *Config) { c.Trust = nil },
		"suspect > down": func(c *Config) { c.SuspectAfter = 5 },
		"zero probe":     func(c *Config) { c.ProbeInterval = 0 },
		"zero fanout":    func(c *Config) { c.ProbeFanout = 0 },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRotationBound(t *testing.T) {
	c := DefaultConfig() // fanout 8, 2 s
	for sites, want := range map[int]time.Duration{1: 2 * time.Second, 5: 2 * time.Second, 9: 2 * time.Second,
		10: 4 * time.Second, 100: 26 * time.Second} {
		if got := c.RotationBound(sites); got != want {
			t.Errorf("RotationBound(%d) = %v, want %v", sites, got, want)
		}
	}
}

func TestIdentityPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	_, a, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, b, err := LoadIdentity(dir)
	if err != nil || a != b {
		t.Fatalf("second load: %s, %v; first %s", b, err, a)
	}
}
