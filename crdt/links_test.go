package crdt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-ds-crdt/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
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
	// The connection's events are handled before the group exists: one
	// handled later would start a round on connect that pushes the new
	// group's heads into the queue counted below.
	connectionHandled(t, a, b)
	connectionHandled(t, b, a)
	g, err := a.m.join(ctx, ab)
	if err != nil {
		t.Fatal(err)
	}
	// A link that queues and does not write yet.
	ls := &a.m.links
	l := newLink(b.id)
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
	writeSeen(t, a, b)
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
	writeSeen(t, a, b)
	// b answers rounds only once released: the first round holds.
	release := make(chan struct{})
	served := make(chan struct{}, 16)
	for _, proto := range []protocol.ID{DigestProtocol, DigestKeptProtocol} {
		b.host.SetStreamHandler(proto, func(s network.Stream) {
			served <- struct{}{}
			<-release
			if proto == DigestKeptProtocol {
				b.m.serveKeptDigests(s)
			} else {
				b.m.serveDigests(s)
			}
		})
	}
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

// TestBehindReplicaDoesNotHoldTheLink: one link carries every group two
// sites share. When b's replica of {a,b} is stuck (walking a head whose
// block a does not send yet) and its queue fills, a's further
// announcements of {a,b} are dropped at b at once: a write into
// {a,b,c}, behind them on the same link, is seen at b while {a,b} is
// still stuck. (When the link waited a second per announcement for
// room, the write came 20 s later.) No periodic round, push or
// rebroadcast runs, so that the write can come over the link only. Once
// unstuck, b gets every write of {a,b} back: the dropped announcements'
// blocks were kept, and an anti-entropy round brings the last heads.
func TestBehindReplicaDoesNotHoldTheLink(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.tune = func(c *Config) {
		c.RebroadcastInterval = time.Hour
		c.PushDelays = []time.Duration{time.Hour}
		c.DigestInterval = time.Hour
		c.RepairInterval = time.Hour
		c.FetchTimeout = time.Minute // the stuck walk waits for the release
	}
	n.startAll("a", "b", "c")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab, abc := []string{"a", "b"}, []string{"a", "b", "c"}
	// a holds b's block requests until released.
	release := make(chan struct{})
	unstick := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unstick)
	asked := make(chan struct{}, 1)
	a.host.SetStreamHandler(BlockProtocol, func(s network.Stream) {
		select {
		case asked <- struct{}{}:
		default:
		}
		<-release
		a.m.serveBlocks(s)
	})
	g, err := a.m.join(ctx, ab)
	if err != nil {
		t.Fatal(err)
	}
	// A head nobody holds: b's replica asks a for its block and waits.
	ghost := blocks.NewBlock([]byte("a delta nobody holds"))
	heads, _ := proto.Marshal(&pb.CRDTBroadcast{Heads: []*pb.Head{{Cid: ghost.Cid().Bytes()}}})
	if err := a.m.links.send(ctx, b.id, g, encodeMessage(heads, nil), linkFresh); err != nil {
		t.Fatal(err)
	}
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("b's replica never asked for the missing block")
	}
	const writes = headsBuffer + 20
	for i := range writes {
		if err := a.m.Put(ctx, ab, fmt.Sprintf("/k/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.m.Put(ctx, abc, "/other", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Dropped at once, the 20 announcements behind a full queue take
	// milliseconds; waited for, 20 s.
	eventually(t, 5*time.Second, "b sees the write into {a,b,c} while {a,b} is stuck", func() error {
		return hasValue(b, abc, "/other", "v")
	})
	if got := counterValue(b.m.metrics.queueDrops); got == 0 {
		t.Fatal("no announcement dropped at b: its replica's queue never filled")
	}
	unstick()
	eventually(t, 30*time.Second, "b holds every write into {a,b}", func() error {
		if _, err := a.m.digestRound(ctx, b.id, false); err != nil {
			return err
		}
		for i := range writes {
			if err := hasValue(b, ab, fmt.Sprintf("/k/%d", i), "v"); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestASleepingGroupKeepsNoSources: b's group remembers which member
// announced which heads while it is awake (for its fetches), and
// forgets them when it goes to sleep: an idle group keeps no map of
// heads.
func TestASleepingGroupKeepsNoSources(t *testing.T) {
	n := newNet(t, "a", "b")
	// Long enough that b's group is still awake at the first look on a
	// loaded machine (with 200 ms, a late poll could find it asleep).
	n.tune = func(c *Config) { c.IdleAfter = 2 * time.Second }
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	writeSeen(t, a, b)
	g := b.m.group("a,b")
	remembered := func() int {
		g.sources.mu.Lock()
		defer g.sources.mu.Unlock()
		return len(g.sources.by)
	}
	if remembered() == 0 {
		t.Fatal("b's awake group remembers no announced heads")
	}
	// An announcement (a's pushes after the connection) may land between
	// the group's sleep and the look, and wakes it: what must not happen
	// is a group asleep that keeps remembering.
	eventually(t, 10*time.Second, "b's group sleeps and remembers no announced heads", func() error {
		if !asleep(b, "a,b") {
			return fmt.Errorf("awake")
		}
		if got := remembered(); got != 0 {
			return fmt.Errorf("b's sleeping group remembers %d announced heads", got)
		}
		return nil
	})
}

// A link header is written and read without encoding/json's reflection,
// its peers left as JSON until a group not joined needs them (4.5 % of
// the bytes allocated at 100 sites), in the same JSON; a header the
// direct path does not take still goes through encoding/json.
func TestLinkHeaderDirectPath(t *testing.T) {
	id, err := peer.Decode("12D3KooWASPCivYQMW4xxJc36bZ3PUAqzwaKsSnk365bseo25W86")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []linkHeader{
		{Group: "s01,s02"},
		{Group: `a"b,c\d`},
		{Group: "é,ü"},
		{Group: "a<b>&c"},
		{Group: "a,b", Peers: []peer.ID{id, id}},
		{Group: `a"b`, Peers: []peer.ID{id}},
	} {
		enc, err := h.encode()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(h)
		if !bytes.Equal(enc, want) {
			t.Errorf("%+v encoded as %s, encoding/json gives %s", h, enc, want)
		}
		var in linkHeaderIn
		var peers []peer.ID
		if err := in.decode(enc); err != nil || in.Group != h.Group {
			t.Errorf("%s decoded as %+v, %v", enc, in, err)
		}
		if len(in.Peers) > 0 {
			if err := json.Unmarshal(in.Peers, &peers); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(peers, h.Peers) {
			t.Errorf("%s: peers %v, want %v", enc, peers, h.Peers)
		}
	}
	for _, c := range []struct {
		h    linkHeader
		most float64
	}{
		{linkHeader{Group: "s01,s02,s03"}, 2},                       // its bytes, its name
		{linkHeader{Group: "s01,s02", Peers: []peer.ID{id, id}}, 3}, // read: its name, its peers' JSON
	} {
		enc, _ := c.h.encode()
		allocs := testing.AllocsPerRun(100, func() {
			var h linkHeaderIn
			if err := h.decode(enc); err != nil {
				t.Fatal(err)
			}
		})
		if c.h.Peers == nil {
			allocs += testing.AllocsPerRun(100, func() {
				if _, err := c.h.encode(); err != nil {
					t.Fatal(err)
				}
			})
		}
		if allocs > c.most {
			t.Errorf("%s: %.0f allocations, want at most %.0f", enc, allocs, c.most)
		}
	}
}

// connectionHandled waits until s has handled every connection event it
// was sent for other: none is left in its channel, and the push schedule
// the event starts runs.
func connectionHandled(t *testing.T, s, other *site) {
	t.Helper()
	eventually(t, 10*time.Second, "the connection's events are handled", func() error {
		if n := len(s.m.connected); n > 0 {
			return fmt.Errorf("%d connection events queued", n)
		}
		s.m.pushMu.Lock()
		_, scheduled := s.m.pushing[other.id]
		s.m.pushMu.Unlock()
		if !scheduled {
			return fmt.Errorf("no push schedule for %s yet", other.name)
		}
		return nil
	})
}
