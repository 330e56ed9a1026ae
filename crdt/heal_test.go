package crdt

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// What a heal looks like to two sites that stay connected through a
// second connection: the connection the cut stalled swallowed what was
// written on it, then closes; the member stays connected through the
// other one, so no connection event comes. (In `cheops bench
// convergence` one pair in a few had such a second, idle connection: its
// groups waited for the next anti-entropy round, 1–2 s after the others.)

// healTune leaves no periodic repair: what converges does so because of
// the heal itself.
func healTune(c *Config) {
	c.RebroadcastInterval = time.Hour
	c.PushDelays = []time.Duration{time.Hour}
	c.DigestInterval = time.Hour
	c.RepairInterval = time.Hour
}

// twoConns leaves a and b connected by two connections (a simultaneous
// dial from both sides makes two about one time in three).
func twoConns(t *testing.T, a, b *site) {
	t.Helper()
	for range 200 {
		if len(a.host.Network().ConnsToPeer(b.id)) >= 2 && len(b.host.Network().ConnsToPeer(a.id)) >= 2 {
			return
		}
		_ = a.host.Network().ClosePeer(b.id)
		var wg sync.WaitGroup
		for _, pair := range [][2]*site{{a, b}, {b, a}} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = pair[0].host.Connect(ctx, peer.AddrInfo{ID: pair[1].id, Addrs: pair[1].host.Addrs()})
			})
		}
		wg.Wait()
	}
	t.Fatal("could not get two connections between a and b")
}

// linkConn is the connection that carries a's link to b.
func linkConn(a, b *site) network.Conn {
	for _, c := range a.host.Network().ConnsToPeer(b.id) {
		for _, s := range c.GetStreams() {
			if s.Protocol() == LinkProtocol && s.Stat().Direction == network.DirOutbound {
				return c
			}
		}
	}
	return nil
}

// TestLinkResendsOnANewStreamWhenItsConnectionCloses: a write announced
// after the connection under a's link closed, while a and b stay
// connected through another connection, reaches b: the link sends the
// message again on a new stream instead of dropping it.
func TestLinkResendsOnANewStreamWhenItsConnectionCloses(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = healTune
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	twoConns(t, a, b)
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /before", func() error { return hasValue(b, ab, "/before", "1") })
	c := linkConn(a, b)
	if c == nil {
		t.Fatal("no connection carries a's link to b")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if a.host.Network().Connectedness(b.id) != network.Connected {
		t.Fatal("a and b are no longer connected: the test needs their second connection")
	}
	if err := a.m.Put(ctx, ab, "/after", []byte("2")); err != nil {
		t.Fatal(err)
	}
	// Nothing periodic runs within the hour: without the resend, b never
	// has it.
	eventually(t, 10*time.Second, "b has /after", func() error { return hasValue(b, ab, "/after", "2") })
}
