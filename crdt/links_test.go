package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// TestLinkSendsOnlyTheNewestPushOfAGroup: heads pushes queued behind a
// link that is not writing yet (after a heal: its stream being opened on
// the new connection) go out as one, the newest of their group; the
// broadcasts between them (new deltas, with their blocks) all go, and b
// ends with every write.
func TestLinkSendsOnlyTheNewestPushOfAGroup(t *testing.T) {
	_, a, b := healPair(t)
	ctx := context.Background()
	ab := []string{"a", "b"}
	g, err := a.m.join(ctx, ab)
	if err != nil {
		t.Fatal(err)
	}
	// A link that queues and does not write yet.
	ls := &a.m.links
	l := &link{peer: b.id, queue: make(chan linkMessage, linkQueue), pushes: map[string]int{}, done: make(chan struct{})}
	ls.mu.Lock()
	if ls.by[b.id] != nil {
		ls.mu.Unlock()
		t.Fatal("a already has a link to b")
	}
	ls.by[b.id] = l
	ls.mu.Unlock()
	const writes = 3
	for i := range writes {
		if err := a.m.Put(ctx, ab, fmt.Sprintf("/k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := g.pushHeads(ctx, b.id); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(l.queue); got != 2*writes {
		t.Fatalf("%d messages queued, want %d (a broadcast and a push per write)", got, 2*writes)
	}
	a.m.wg.Add(1)
	go ls.run(l)
	eventually(t, 10*time.Second, "b has every write", func() error {
		for i := range writes {
			if err := hasValue(b, ab, fmt.Sprintf("/k%d", i), "v"); err != nil {
				return err
			}
		}
		return nil
	})
	if got := counterValue(a.m.metrics.pushesCoalesced); got != writes-1 {
		t.Fatalf("%v pushes coalesced, want %d (all but the newest)", got, writes-1)
	}
	ls.mu.Lock()
	left := l.pushes[g.name]
	ls.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d pushes still counted as queued after the link sent them", left)
	}
}

// TestConnectionEventsShareOneSchedule: a burst of connection events for
// one member (a heal brings two or three within tens of milliseconds)
// runs one schedule of heads pushes, started over by each event, not one
// schedule per event.
func TestConnectionEventsShareOneSchedule(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) {
		healTune(c)
		c.PushDelays = []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond}
	}
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /k", func() error { return hasValue(b, ab, "/k", "v") })
	schedulesEnd := func() error {
		a.m.pushMu.Lock()
		defer a.m.pushMu.Unlock()
		if len(a.m.pushing) > 0 {
			return fmt.Errorf("%d schedules running", len(a.m.pushing))
		}
		return nil
	}
	// The schedules started by the hosts connecting end first: their
	// pushes are not the events' own.
	eventually(t, 10*time.Second, "the connection's schedule ends", schedulesEnd)
	before := counterValue(a.m.metrics.headsPushed)
	const events = 3
	for range events {
		a.m.schedulePushes(b.id)
	}
	eventually(t, 10*time.Second, "the schedule ends", schedulesEnd)
	// One schedule, started over by each later event: the schedule's own
	// pushes, and at most the immediate one more per restart (it may go
	// before the restart is seen). A schedule per event would push
	// events × len(PushDelays) times.
	if got, most := counterValue(a.m.metrics.headsPushed)-before, float64(len(a.m.cfg.PushDelays)+events-1); got > most {
		t.Fatalf("%v heads pushes for %d connection events, want at most %v", got, events, most)
	}
}

// TestConnectionEventsShareOneDigestRound: connection events for a
// member while an anti-entropy round with it runs ask for one more round
// after it, not one round each.
func TestConnectionEventsShareOneDigestRound(t *testing.T) {
	_, a, b := healPair(t)
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /k", func() error { return hasValue(b, ab, "/k", "v") })
	// b answers rounds only once released: the first round holds.
	release := make(chan struct{})
	served := make(chan struct{}, 16)
	b.host.SetStreamHandler(DigestProtocol, func(s network.Stream) {
		served <- struct{}{}
		<-release
		b.m.serveDigests(s)
	})
	before := vecTotal(a.m.metrics.digestRounds)
	const events = 3
	for range events {
		a.m.connected <- b.id
	}
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("no round reached b")
	}
	close(release)
	eventually(t, 10*time.Second, "the rounds end", func() error {
		if got := vecTotal(a.m.metrics.digestRounds) - before; got < 2 {
			return fmt.Errorf("%v rounds ended", got)
		}
		return nil
	})
	// Time for a third round to end, were there one.
	time.Sleep(200 * time.Millisecond)
	if got := vecTotal(a.m.metrics.digestRounds) - before; got != 2 {
		t.Fatalf("%v anti-entropy rounds for %d connection events during one, want 2 (the one running, one after it)", got, events)
	}
}
