package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"cheops/internal/testkit"
	"cheops/scope"
)

func swarmKey(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(b) + "\n")
}

func TestSwarmKeyTCPOnly(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "outsider")
	key := swarmKey(t)
	start := func(site string, key []byte, peers ...string) *Node {
		cfg := fastConfig(site, c.dirs[site], c.trust(), peers...)
		cfg.SwarmKey = key
		n, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatalf("start %s: %v", site, err)
		}
		c.nodes[site] = n
		return n
	}
	paris := start("paris", key)
	for _, a := range paris.Addrs() {
		if strings.Contains(a, "/quic") {
			t.Fatalf("with a swarm key paris listens on %s", a)
		}
	}
	berlin := start("berlin", key, paris.Addrs()[0])
	eventually(t, 10*time.Second, "berlin and paris up", func() error {
		if err := sees(paris, "berlin", scope.Up); err != nil {
			return err
		}
		return sees(berlin, "paris", scope.Up)
	})

	// Trusted by everyone, but holding another key: no connection.
	outsider := start("outsider", swarmKey(t), paris.Addrs()[0])
	info, _ := peer.AddrInfoFromString(paris.Addrs()[0])
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := outsider.Host().Connect(ctx, *info); err == nil {
		t.Fatal("a node with another swarm key connected")
	}
	if _, ok := paris.View().Sites["outsider"]; ok {
		t.Fatal("paris lists the outsider")
	}
}

func TestQUICOnly(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	start := func(site string, peers ...string) *Node {
		cfg := fastConfig(site, c.dirs[site], c.trust(), peers...)
		cfg.Listen = []string{"/ip4/127.0.0.1/udp/0/quic-v1"}
		n, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatalf("start %s: %v", site, err)
		}
		c.nodes[site] = n
		return n
	}
	paris := start("paris")
	berlin := start("berlin", paris.Addrs()[0])
	eventually(t, 10*time.Second, "up over QUIC", func() error {
		if err := sees(paris, "berlin", scope.Up); err != nil {
			return err
		}
		return sees(berlin, "paris", scope.Up)
	})
	for _, conn := range berlin.Host().Network().ConnsToPeer(paris.ID()) {
		if _, err := conn.RemoteMultiaddr().ValueForProtocol(multiaddr.P_QUIC_V1); err != nil {
			t.Fatalf("connection over %s", conn.RemoteMultiaddr())
		}
	}
}

// A site that restarts on the same address, without bootstrap peers of its
// own, is redialled by the others within MaxRedialBackoff, whatever the
// swarm's own dial backoff says.
func TestRedialRestartedSite(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	// A port below the kernel's ephemeral range: one it handed out for
	// tcp/0 could be taken by another test's socket while paris is down.
	first := fastConfig("paris", c.dirs["paris"], c.trust())
	first.Listen = []string{"/ip4/127.0.0.1/tcp/" + testkit.FreePort(t)}
	paris, err := New(context.Background(), first)
	if err != nil {
		t.Fatalf("start paris: %v", err)
	}
	c.nodes["paris"] = paris
	addr := paris.Addrs()[0]
	berlin := c.start("berlin", addr)
	eventually(t, 10*time.Second, "paris up at berlin", func() error { return sees(berlin, "paris", scope.Up) })

	c.stop("paris")
	cfg := fastConfig("paris", c.dirs["paris"], c.trust())
	eventually(t, cfg.DownBound()+2*time.Second, "paris down at berlin", func() error { return sees(berlin, "paris", scope.Down) })

	ma, err := multiaddr.NewMultiaddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	listen, _ := multiaddr.SplitLast(ma) // drop /p2p/…
	cfg.Listen = []string{listen.String()}
	paris, err = New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart paris on %s: %v", listen, err)
	}
	c.nodes["paris"] = paris
	// The swarm's own backoff alone would refuse to dial for 5 s or more.
	bound := cfg.MaxRedialBackoff + cfg.ProbeInterval + cfg.ProbeTimeout + 3*time.Second
	eventually(t, bound, "paris up again at berlin", func() error { return sees(berlin, "paris", scope.Up) })
	eventually(t, 5*time.Second, "berlin up at paris", func() error { return sees(paris, "berlin", scope.Up) })
}

func TestTopicAccess(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	romeID := c.ids["rome"]
	start := func(site string, access func(string, peer.ID) bool, peers ...string) *Node {
		cfg := fastConfig(site, c.dirs[site], c.trust(), peers...)
		cfg.TopicAccess = access
		n, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatalf("start %s: %v", site, err)
		}
		c.nodes[site] = n
		return n
	}
	// "/t/ok" is open to paris and berlin, not to rome.
	access := func(topic string, p peer.ID) bool { return topic == "/t/ok" && p != romeID }
	paris := start("paris", access)
	berlin := start("berlin", access, paris.Addrs()[0])
	rome := start("rome", func(string, peer.ID) bool { return true }, paris.Addrs()[0])
	eventually(t, 10*time.Second, "all up", func() error {
		for _, s := range []string{"berlin", "rome"} {
			if err := sees(paris, s, scope.Up); err != nil {
				return err
			}
		}
		return nil
	})

	if _, err := paris.PubSub().Join("/t/denied"); err == nil {
		t.Fatal("paris joined a topic TopicAccess denies")
	}
	topics := map[string]*pubsub.Topic{}
	subs := map[string]<-chan []byte{}
	for name, n := range map[string]*Node{"paris": paris, "berlin": berlin, "rome": rome} {
		topic, err := n.PubSub().Join("/t/ok")
		if err != nil {
			t.Fatalf("%s joins: %v", name, err)
		}
		sub, err := topic.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sub.Cancel)
		topics[name] = topic
		ch := make(chan []byte, 100)
		subs[name] = ch
		go func() {
			for {
				m, err := sub.Next(context.Background())
				if err != nil {
					return
				}
				if m.ReceivedFrom != n.ID() {
					ch <- m.Data
				}
			}
		}()
	}
	eventually(t, 10*time.Second, "berlin in paris's topic", func() error {
		for _, p := range paris.PubSub().ListPeers("/t/ok") {
			if p == berlin.ID() {
				return nil
			}
		}
		return fmt.Errorf("peers %v", paris.PubSub().ListPeers("/t/ok"))
	})
	for _, p := range paris.PubSub().ListPeers("/t/ok") {
		if p == romeID {
			t.Fatal("paris accepted rome's subscription")
		}
	}
	// A topic's mesh forms at the next gossipsub heartbeat: publish until
	// berlin hears.
	eventually(t, 10*time.Second, "berlin hears paris", func() error {
		if err := topics["paris"].Publish(context.Background(), []byte("hello")); err != nil {
			return err
		}
		select {
		case m := <-subs["berlin"]:
			if string(m) != "hello" {
				t.Fatalf("berlin got %q", m)
			}
			return nil
		case <-time.After(200 * time.Millisecond):
			return errors.New("nothing yet")
		}
	})
	select {
	case m := <-subs["rome"]:
		t.Fatalf("rome got %q on a topic it may not join", m)
	default:
	}
}

func TestDataDirLocked(t *testing.T) {
	c := newCluster(t, "paris")
	c.start("paris")
	_, err := New(context.Background(), fastConfig("paris2", c.dirs["paris"], c.trust()))
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second node on one data directory: %v, want ErrDataDirInUse", err)
	}
	c.stop("paris")
	c.start("paris") // the lock went with the first node
}

func TestIdentityFileMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	if _, _, err := LoadIdentity(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, IdentityFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadIdentity(dir); err == nil {
		t.Fatal("a corrupt identity file was accepted")
	}
}

func TestDecodeRecord(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.ids["a"], c.ids["b"]
	good := fmt.Sprintf(`{"site":"paris","peer":%q,"addrs":["/ip4/127.0.0.1/tcp/1"],"rtt_ms":{"berlin":1.5}}`, a)
	if r, err := decodeRecord([]byte(good), a); err != nil || r.Site != "paris" || r.RTTms["berlin"] != 1.5 {
		t.Fatalf("good record: %+v, %v", r, err)
	}
	for name, tc := range map[string]struct {
		data   string
		signer peer.ID
	}{
		"signed by another": {good, b},
		"not json":          {"{", a},
		"bad site":          {fmt.Sprintf(`{"site":"9x","peer":%q}`, a), a},
		"bad addr":          {fmt.Sprintf(`{"site":"x","peer":%q,"addrs":["/ip4/1"]}`, a), a},
		"bad rtt":           {fmt.Sprintf(`{"site":"x","peer":%q,"rtt_ms":{"y":-1}}`, a), a},
		"too big":           {fmt.Sprintf(`{"site":"x","peer":%q,"addrs":[%q]}`, a, strings.Repeat("a", maxRecordSize)), a},
	} {
		if _, err := decodeRecord([]byte(tc.data), tc.signer); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
