package crdt

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
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
		// A failed simultaneous dial puts the address in dial backoff,
		// which would fail every later try at once.
		for _, s := range []*site{a, b} {
			if sw, ok := s.host.Network().(*swarm.Swarm); ok {
				sw.Backoff().Clear(a.id)
				sw.Backoff().Clear(b.id)
			}
		}
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
	_, a, b := healPair(t)
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

// TestStalledConnectionClosingStartsACatchUp: what a's link wrote on a
// connection that swallowed it is lost; when that connection closes and
// a and b stay connected through another, they compare digests at once
// and b gets the lost writes, with no periodic round, rebroadcast or
// push within the test's bound.
func TestStalledConnectionClosingStartsACatchUp(t *testing.T) {
	_, a, b := healPair(t)
	twoConns(t, a, b)
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /before", func() error { return hasValue(b, ab, "/before", "1") })

	// The stall: b's host reads link streams and drops what they carry.
	var swallowed atomic.Int64
	opened := make(chan network.Stream, 4)
	b.host.SetStreamHandler(LinkProtocol, func(s network.Stream) {
		opened <- s
		buf := make([]byte, 4096)
		for {
			n, err := s.Read(buf)
			swallowed.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	c := linkConn(a, b)
	if c == nil {
		t.Fatal("no connection carries a's link to b")
	}
	for _, s := range c.GetStreams() {
		if s.Protocol() == LinkProtocol && s.Stat().Direction == network.DirOutbound {
			_ = s.Reset() // a's link opens a new stream, to the stall
		}
	}
	var stalled network.Stream
	for i := 0; stalled == nil; i++ {
		if err := a.m.Put(ctx, ab, fmt.Sprintf("/cut/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case stalled = <-opened:
		case <-time.After(100 * time.Millisecond):
		}
		if i > 100 {
			t.Fatal("a's link did not open a new stream")
		}
	}
	got := swallowed.Load()
	if err := a.m.Put(ctx, ab, "/lost", []byte("y")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the stall swallows /lost", func() error {
		if swallowed.Load() == got {
			return fmt.Errorf("nothing more read")
		}
		return nil
	})
	b.host.SetStreamHandler(LinkProtocol, b.m.serveLink)
	if err := hasValue(b, ab, "/lost", "y"); err == nil {
		t.Fatal("b has /lost: the stall did not swallow it")
	}

	// The heal: the stalled connection closes; the other one stays.
	if err := stalled.Conn().Close(); err != nil {
		t.Fatal(err)
	}
	if b.host.Network().Connectedness(a.id) != network.Connected {
		t.Fatal("a and b are no longer connected: the test needs their second connection")
	}
	eventually(t, 10*time.Second, "b has /lost", func() error { return hasValue(b, ab, "/lost", "y") })
}

// TestAnAnswerlessMemberHoldsUpOnlyItsOwnRounds: while a's round with b
// waits for an answer that does not come (b's connection stalled by a
// cut: the round waits until FetchTimeout), a's rounds with c go on. a's
// peer id sorts first, so that a starts the periodic rounds with both
// (asks); b and c, whose own intervals are an hour, start none.
func TestAnAnswerlessMemberHoldsUpOnlyItsOwnRounds(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.orderIDs("a", "b", "c")
	n.tune = func(c *Config) {
		healTune(c)
		if c.Self == "a" {
			c.DigestInterval = 50 * time.Millisecond
		}
	}
	n.startAll("a", "b", "c")
	a, b, c := n.sites["a"], n.sites["b"], n.sites["c"]
	if !asks(a.id, b.id) || !asks(a.id, c.id) {
		t.Fatal("a does not start the rounds with b and c")
	}
	ctx := context.Background()
	ab, ac := []string{"a", "b"}, []string{"a", "c"}
	for _, sites := range [][]string{ab, ac} {
		if err := a.m.Put(ctx, sites, "/k", []byte("1")); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, fmt.Sprintf("%s has /k", sites[1]), func() error {
			return hasValue(n.sites[sites[1]], sites, "/k", "1")
		})
	}
	// b reads rounds and never answers.
	asked := make(chan struct{}, 1)
	for _, proto := range []protocol.ID{DigestProtocol, DigestKeptProtocol} {
		b.host.SetStreamHandler(proto, func(s network.Stream) {
			select {
			case asked <- struct{}{}:
			default:
			}
			_, _ = io.Copy(io.Discard, s)
		})
	}
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("a started no round with b")
	}
	// c counts the rounds it answers; a's rounds with c are quiet (1, 2,
	// 4… intervals apart, at most 12): three take at most 1.4 s.
	answered := counterValue(c.m.metrics.digestRoundsAnswered)
	eventually(t, 10*time.Second, "three rounds of a with c while its round with b waits", func() error {
		if got := counterValue(c.m.metrics.digestRoundsAnswered) - answered; got < 3 {
			return fmt.Errorf("%v rounds with c", got)
		}
		return nil
	})
}

// orderIDs gives the named sites, not started yet, their peer ids in
// the order of names, so that a test knows which site of a pair starts
// the periodic anti-entropy rounds (asks).
func (n *testNet) orderIDs(names ...string) {
	type identity struct {
		key crypto.PrivKey
		id  peer.ID
	}
	ids := make([]identity, len(names))
	for i, name := range names {
		ids[i] = identity{n.keys[name], n.ids[name]}
	}
	slices.SortFunc(ids, func(x, y identity) int { return strings.Compare(string(x.id), string(y.id)) })
	for i, name := range names {
		n.keys[name], n.ids[name] = ids[i].key, ids[i].id
	}
}

// TestHealSendsLittleSharedHistory: after a heal, the block server stops
// walking at the split point within a round trip of the asker's "I have
// it" report. Two sites share a history of 300 single-write blocks (as
// the operations of a catalog make), write 5 blocks each during a cut,
// and heal: each fetches the other's 5 and, of the 300 shared blocks
// below the split, only the few sent before the report reached the
// server. (The server once kept its answer in a 64 KiB write buffer
// until the buffer filled: the report named a block the asker received
// after the server had queued a buffer's worth of history below it, and
// each site received 150–300 blocks it held.)
func TestHealSendsLittleSharedHistory(t *testing.T) {
	n, a, b := healPair(t)
	ctx := context.Background()
	ab := []string{"a", "b"}
	const history = 300
	for i := range history {
		if err := a.m.Put(ctx, ab, fmt.Sprintf("/old/%d", i), []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "b has the history", func() error {
		return hasValue(b, ab, fmt.Sprintf("/old/%d", history-1), "old")
	})
	n.partition([]string{"a"}, []string{"b"})
	for _, s := range []*site{a, b} {
		for i := range 5 {
			if err := s.m.Put(ctx, ab, fmt.Sprintf("/cut/%s/%d", s.name, i), []byte(s.name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	dups := counterValue(a.m.metrics.duplicateBlocks) + counterValue(b.m.metrics.duplicateBlocks)
	n.heal([]string{"a"}, []string{"b"})
	eventually(t, 30*time.Second, "both have both sides' writes", func() error {
		for _, s := range []*site{a, b} {
			for _, w := range []string{"a", "b"} {
				if err := hasValue(s, ab, "/cut/"+w+"/4", w); err != nil {
					return err
				}
			}
		}
		return nil
	})
	got := counterValue(a.m.metrics.duplicateBlocks) + counterValue(b.m.metrics.duplicateBlocks) - dups
	t.Logf("blocks received that the receiver held: %.0f", got)
	if got > 60 {
		t.Fatalf("%.0f blocks received that the receiver held (of %d shared): the server walked past the split point", got, history)
	}
}

// TestHealSendsLittleBranchyHistory: as TestHealSendsLittleSharedHistory,
// with a shared history written by three sites at once, so that the DAG
// branches and merges all the way down: a known block must stop every
// path below it, not only the path through it. (Walked breadth first,
// the paths that went round the known blocks reached the root: up to
// 150 blocks resent per answer in `cheops bench convergence`.)
func TestHealSendsLittleBranchyHistory(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.tune = healTune
	n.startAll("a", "b", "c")
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	const perSite = 100
	var wg sync.WaitGroup
	for _, name := range abc {
		wg.Go(func() {
			for i := range perSite {
				if err := n.sites[name].m.Put(ctx, abc, fmt.Sprintf("/old/%s/%d", name, i), []byte("old")); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, s := range abc {
		for _, w := range abc {
			eventually(t, 30*time.Second, s+" has the history", func() error {
				return hasValue(n.sites[s], abc, fmt.Sprintf("/old/%s/%d", w, perSite-1), "old")
			})
		}
	}
	eventually(t, 30*time.Second, "same heads everywhere", func() error {
		a := n.sites["a"].m.group("a,b,c").headsDigest(ctx)
		for _, s := range []string{"b", "c"} {
			if d := n.sites[s].m.group("a,b,c").headsDigest(ctx); d != a {
				return fmt.Errorf("%s's heads differ from a's", s)
			}
		}
		return nil
	})
	n.partition([]string{"a"}, []string{"b", "c"})
	for _, name := range []string{"a", "b"} {
		for i := range 5 {
			if err := n.sites[name].m.Put(ctx, abc, fmt.Sprintf("/cut/%s/%d", name, i), []byte(name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 10*time.Second, "c has b's writes", func() error { return hasValue(n.sites["c"], abc, "/cut/b/4", "b") })
	dups := 0.0
	for _, s := range abc {
		dups += counterValue(n.sites[s].m.metrics.duplicateBlocks)
	}
	n.heal([]string{"a"}, []string{"b", "c"})
	eventually(t, 30*time.Second, "every site has both sides' writes", func() error {
		for _, s := range abc {
			for _, w := range []string{"a", "b"} {
				if err := hasValue(n.sites[s], abc, "/cut/"+w+"/4", w); err != nil {
					return err
				}
			}
		}
		return nil
	})
	got := -dups
	for _, s := range abc {
		got += counterValue(n.sites[s].m.metrics.duplicateBlocks)
	}
	t.Logf("blocks received that the receiver held: %.0f", got)
	if got > 60 {
		t.Fatalf("%.0f blocks received that the receiver held (of %d shared): the server walked past the split point", got, 3*perSite)
	}
}

// TestFetchResetAtTheHealIsAskedAgain: a block request whose stream is
// reset under it (at a heal, the connection the cut stalled closes under
// the fetches it carried) is sent again at once to the member, connected
// still or again, instead of failing the walk: go-ds-crdt drops a head
// whose walk failed, and nothing periodic brings it back within the test.
func TestFetchResetAtTheHealIsAskedAgain(t *testing.T) {
	n, a, b := healPair(t)
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /before", func() error { return hasValue(b, ab, "/before", "1") })
	n.partition([]string{"a"}, []string{"b"})
	for i := range 5 {
		if err := b.m.Put(ctx, ab, fmt.Sprintf("/during%d", i), []byte("2")); err != nil {
			t.Fatal(err)
		}
	}
	// b resets the first block request it gets.
	var resets atomic.Int64
	b.host.SetStreamHandler(BlockProtocol, func(s network.Stream) {
		if resets.CompareAndSwap(0, 1) {
			_ = s.Reset()
			return
		}
		b.m.serveBlocks(s)
	})
	n.heal([]string{"a"}, []string{"b"})
	eventually(t, 10*time.Second, "a has b's writes", func() error { return hasValue(a, ab, "/during4", "2") })
	if resets.Load() != 1 {
		t.Fatal("no block request was reset: the test did not test")
	}
	if got := counterValue(a.m.metrics.fetchRetries); got != 1 {
		t.Fatalf("%v fetches asked again, want 1", got)
	}
}

// healPair starts sites a and b with the heal tests' timings.
func healPair(t *testing.T) (n *testNet, a, b *site) {
	t.Helper()
	n = newNet(t, "a", "b")
	n.tune = healTune
	n.startAll("a", "b")
	return n, n.sites["a"], n.sites["b"]
}
