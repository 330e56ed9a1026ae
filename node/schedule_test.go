package node

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

func peers(n int) []peer.ID {
	var out []peer.ID
	for i := range n {
		out = append(out, peer.ID(fmt.Sprintf("p%03d", i)))
	}
	return out
}

func newTestRotation(ps []peer.ID, seed uint64) *rotation {
	r := newRotation(rand.New(rand.NewPCG(seed, seed)))
	for _, p := range ps {
		r.add(p)
	}
	return r
}

// With every peer healthy, a round probes min(fanout, N) peers, and each
// peer is probed at least every ⌈N/fanout⌉ rounds: all of them every
// round up to fanout.
func TestPlanRoundRotates(t *testing.T) {
	for _, tc := range []struct{ n, fanout int }{{3, 8}, {8, 8}, {9, 8}, {39, 8}, {99, 8}, {100, 3}, {10, 1}} {
		ps := peers(tc.n)
		rot := newTestRotation(ps, uint64(tc.n))
		healthy := func(peer.ID) probeNeed { return needNothing }
		bound := (tc.n + tc.fanout - 1) / tc.fanout
		last := map[peer.ID]int{}
		for round := range 5 * bound {
			got := planRound(rot, healthy, tc.fanout)
			if len(got) != min(tc.fanout, tc.n) {
				t.Fatalf("N=%d fanout=%d round %d: %d probes, want %d", tc.n, tc.fanout, round, len(got), min(tc.fanout, tc.n))
			}
			for _, p := range got {
				last[p] = round
			}
			for _, p := range ps {
				since, ok := last[p]
				if !ok {
					since = -1
				}
				if round-since >= bound {
					t.Fatalf("N=%d fanout=%d: %s not probed for %d rounds (bound %d)", tc.n, tc.fanout, p, round-since, bound)
				}
			}
		}
	}
}

// Peers that need attention are probed every round on top of the fanout;
// busy ones (a probe still running) are skipped; a peer in trouble does
// not take a healthy one's turn.
func TestPlanRoundAttention(t *testing.T) {
	ps := peers(20)
	rot := newTestRotation(ps, 1)
	need := map[peer.ID]probeNeed{ps[3]: needAttention, ps[7]: needAttention, ps[11]: needBusy}
	fn := func(p peer.ID) probeNeed { return need[p] }
	seen := map[peer.ID]int{}
	for range 6 {
		got := planRound(rot, fn, 4)
		if len(got) != 6 {
			t.Fatalf("round: %v, want 2 in trouble and 4 in turn", got)
		}
		if !slices.Contains(got, ps[3]) || !slices.Contains(got, ps[7]) {
			t.Fatalf("round %v misses a peer in trouble", got)
		}
		if slices.Contains(got, ps[11]) {
			t.Fatalf("round %v probes a busy peer", got)
		}
		for _, p := range got {
			seen[p]++
		}
	}
	// 17 healthy peers, 4 a round: all within ⌈17/4⌉ = 5 rounds.
	for _, p := range ps {
		if need[p] == needNothing && seen[p] == 0 {
			t.Errorf("%s never probed in 6 rounds", p)
		}
	}
	// Early rounds (fanout 0) probe the peers in trouble only.
	if got := planRound(rot, fn, 0); len(got) != 2 {
		t.Fatalf("early round: %v", got)
	}
}

// A peer added while the rotation runs is probed within a pass, and the
// others keep their bound.
func TestRotationAdd(t *testing.T) {
	ps := peers(30)
	rot := newTestRotation(ps[:20], 7)
	healthy := func(peer.ID) probeNeed { return needNothing }
	last := map[peer.ID]int{}
	for round := range 40 {
		if round == 5 {
			for _, p := range ps[20:] {
				rot.add(p)
			}
		}
		for _, p := range planRound(rot, healthy, 5) {
			last[p] = round
		}
	}
	for _, p := range ps {
		if 39-last[p] > 6 { // ⌈30/5⌉ rounds
			t.Errorf("%s last probed at round %d of 40", p, last[p])
		}
	}
}

// bareNode is a node without a host, for the methods that decide from
// its tables alone.
func bareNode(cfg Config) *Node {
	return &Node{cfg: cfg, log: testLogger, byPeer: map[peer.ID]*peerState{}, bySite: map[string]peer.ID{},
		rot: newRotation(rand.New(rand.NewPCG(1, 2))), watchers: map[chan SiteEvent]struct{}{},
		probeNow: make(chan struct{}, 1), dialLimit: min(2, cfg.ProbeFanout)}
}

// Dial slots grow by one per dial that connected, up to ProbeFanout, and
// halve per dial that timed out, down to one; a refused dial changes
// nothing.
func TestDialSlots(t *testing.T) {
	n := bareNode(fastConfig("x", "x", nil))
	var got []int
	for _, d := range []struct{ connected, timedOut bool }{
		{true, false}, {true, false}, {true, false}, {true, false}, {true, false}, {true, false}, {true, false}, // 2 → 8
		{false, false},                                             // refused
		{false, true}, {false, true}, {false, true}, {false, true}, // 8 → 1
		{true, false},
	} {
		n.dialDone(d.connected, d.timedOut)
		got = append(got, n.dialLimit)
	}
	want := []int{3, 4, 5, 6, 7, 8, 8, 8, 4, 2, 1, 1, 2}
	if !slices.Equal(got, want) {
		t.Fatalf("dial slots %v, want %v", got, want)
	}
}

// A failed probe counts as a miss, unless it timed out while this node
// was starved.
func TestStarvedProbeNotCounted(t *testing.T) {
	n := bareNode(fastConfig("x", "x", nil))
	p := peer.ID("p")
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.site, ps.probed, ps.inflight = "rome", true, true
	n.mu.Unlock()
	start := time.Now()
	n.starvedAt = start.Add(time.Millisecond)
	n.observe(p, start, 0, nil, false, true)
	if ps.misses != 0 {
		t.Fatalf("a probe failed while starved counted: %d misses", ps.misses)
	}
	ps.inflight = true
	n.observe(p, n.starvedAt.Add(time.Millisecond), 0, nil, false, true)
	if ps.misses != 1 {
		t.Fatalf("a probe failed while not starved: %d misses, want 1", ps.misses)
	}
	// Refused (not timed out) while starved: the peer's side answered.
	ps.inflight = true
	n.observe(p, start, 0, nil, false, false)
	if ps.misses != 2 {
		t.Fatalf("a probe refused while starved: %d misses, want 2", ps.misses)
	}
}

// Another site's suspicion flags a healthy peer for the next round and
// changes no state; a node passes its own suspicions on only when it
// rotates.
func TestSuspicionHints(t *testing.T) {
	cfg := fastConfig("paris", "x", nil)
	cfg.ProbeFanout = 2
	n := bareNode(cfg)
	n.bySite["paris"] = peer.ID("self")
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, site := range []string{"rome", "oslo"} {
		p := peer.ID(fmt.Sprint("p", i))
		ps := n.peerLocked(p)
		ps.site, ps.probed = site, true
		n.bySite[site] = p
	}
	n.hintedLocked([]string{"rome", "nowhere", "paris"})
	rome, oslo := n.byPeer[n.bySite["rome"]], n.byPeer[n.bySite["oslo"]]
	if !rome.flagged || oslo.flagged || rome.need() != needAttention {
		t.Fatalf("after a hint on rome: rome flagged %v, oslo flagged %v", rome.flagged, oslo.flagged)
	}
	if rome.state() != scope.Up {
		t.Fatalf("a hint changed rome's state to %v", rome.state())
	}
	oslo.misses = cfg.SuspectAfter
	if got := n.suspicionsLocked(); len(got) != 0 {
		t.Fatalf("2 peers, fanout 2: passes on %v, want nothing", got)
	}
	n.peerLocked(peer.ID("p9")) // a third peer: now it rotates
	if got := n.suspicionsLocked(); !slices.Equal(got, []string{"oslo"}) {
		t.Fatalf("passes on %v, want oslo", got)
	}
}
