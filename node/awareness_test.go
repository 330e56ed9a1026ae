package node

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// The score stays within 0 and MaxHealthMultiplier-1 however often it
// is raised or lowered.
func TestHealthBounds(t *testing.T) {
	var h health
	for range 3 * MaxHealthMultiplier {
		h.apply(+1)
	}
	if h.multiplier() != MaxHealthMultiplier || h.scale(time.Second) != MaxHealthMultiplier*time.Second {
		t.Fatalf("raised 24 times: multiplier %d, scale(1s) %v", h.multiplier(), h.scale(time.Second))
	}
	if h.apply(+1) {
		t.Fatal("a raise at the bound reports a change")
	}
	for range 3 * MaxHealthMultiplier {
		h.apply(-1)
	}
	if h.multiplier() != 1 || h.scale(time.Second) != time.Second {
		t.Fatalf("lowered 24 times: multiplier %d", h.multiplier())
	}
}

// A tick later than starvedAfter raises the score and marks the node
// starved; an on-time tick within a ProbeInterval of a late one changes
// nothing. Rounds come after the stretched interval, probes get the
// stretched timeout, and the score falls by one per stretched interval
// of ticks on time. The clock is the times passed in.
func TestLateTicksStretchRounds(t *testing.T) {
	cfg := fastConfig("x", "x", nil) // interval 100 ms, timeout 500 ms: starved after 125 ms late
	n := bareNode(cfg)
	t0 := time.Unix(1000, 0)
	n.ticked(t0, 100*time.Millisecond)
	if n.HealthMultiplier() != 1 || !n.starvedAt.IsZero() {
		t.Fatalf("a tick 100 ms late: multiplier %d, starved at %v", n.HealthMultiplier(), n.starvedAt)
	}
	late := t0.Add(time.Second)
	for i := range 3 {
		n.ticked(late.Add(time.Duration(i)*time.Millisecond), time.Second)
	}
	late = late.Add(2 * time.Millisecond)
	if n.HealthMultiplier() != 4 || !n.starvedAt.Equal(late) {
		t.Fatalf("three ticks 1 s late: multiplier %d, starved at %v", n.HealthMultiplier(), n.starvedAt)
	}
	if got := n.probeTimeout(false); got != 4*cfg.ProbeTimeout {
		t.Fatalf("probe timeout %v at multiplier 4, want %v", got, 4*cfg.ProbeTimeout)
	}
	if got := n.probeTimeout(true); got != 4*cfg.ProbeTimeout {
		t.Fatalf("first-contact timeout %v at multiplier 4, want %v", got, 4*cfg.ProbeTimeout)
	}
	if n.roundDue(late.Add(3*cfg.ProbeInterval), late) || !n.roundDue(late.Add(4*cfg.ProbeInterval), late) {
		t.Fatal("rounds at multiplier 4 are not due after 4 intervals exactly")
	}
	n.ticked(late.Add(cfg.ProbeInterval/2), 0)
	if n.HealthMultiplier() != 4 {
		t.Fatalf("a tick on time half an interval after a late one: multiplier %d", n.HealthMultiplier())
	}
	// One step down per stretched interval of ticks on time: 4 → 3
	// after 400 ms, → 2 after 300 ms more, → 1 after 200 ms more.
	want := map[time.Duration]int{350: 4, 400: 3, 650: 3, 700: 2, 850: 2, 900: 1, 1500: 1}
	for ms := time.Duration(100); ms <= 1500; ms += 50 {
		n.ticked(late.Add(ms*time.Millisecond), 0)
		if w, ok := want[ms]; ok && n.HealthMultiplier() != w {
			t.Fatalf("ticks on time for %d ms after a late one: multiplier %d, want %d", ms, n.HealthMultiplier(), w)
		}
	}
	if n.probeTimeout(false) != cfg.ProbeTimeout || n.probeTimeout(true) != firstContact*cfg.ProbeTimeout {
		t.Fatalf("probe timeouts %v, %v back at multiplier 1", n.probeTimeout(false), n.probeTimeout(true))
	}
	if n.roundDue(late.Add(cfg.ProbeInterval/2), late) || !n.roundDue(late.Add(cfg.ProbeInterval), late) {
		t.Fatal("rounds at multiplier 1 are not due after an interval")
	}
}

// A probe answer that lists this site among the peer's suspects raises
// the score (the peer finds this site slow), and the redial delay of a
// site is stretched by the multiplier. Only methods that predate the
// health score are called: without it, the delay is not stretched.
func TestSuspectedSelfStretchesRedials(t *testing.T) {
	cfg := fastConfig("paris", "x", nil)
	cfg.RedialInterval, cfg.MaxRedialBackoff = 50*time.Millisecond, 50*time.Millisecond
	n := bareNode(cfg)
	rome, oslo := peer.ID("rome"), peer.ID("oslo")
	n.mu.Lock()
	for _, p := range []peer.ID{rome, oslo} {
		ps := n.peerLocked(p)
		ps.site, ps.probed, ps.inflight = string(p), true, true
		n.bySite[string(p)] = p
	}
	n.mu.Unlock()
	ans := &probeAnswer{Suspects: []string{"paris", "oslo"}}
	n.observe(rome, time.Now(), 10*time.Millisecond, ans, true, false)
	n.observe(rome, time.Now(), 10*time.Millisecond, ans, true, false)
	before := time.Now()
	n.redialLater(oslo)
	n.mu.Lock()
	wait := n.byPeer[oslo].nextDial.Sub(before)
	state := n.byPeer[oslo].state()
	n.mu.Unlock()
	if wait < 3*cfg.RedialInterval {
		t.Fatalf("suspected twice by a peer: redial in %v, want at least 3 × %v", wait, cfg.RedialInterval)
	}
	if state != scope.Up {
		t.Fatalf("a peer's suspicion of oslo changed its state to %v", state)
	}
}

// A failed probe is not evidence of this node's slowness: a peer that
// crashed fails its probes, and must go down after DownAfter misses
// whatever the rounds.
func TestFailedProbesLeaveHealth(t *testing.T) {
	n := bareNode(fastConfig("x", "x", nil))
	p := peer.ID("p")
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.site, ps.probed = "rome", true
	n.mu.Unlock()
	for range n.cfg.DownAfter {
		ps.inflight = true
		n.observe(p, time.Now(), 0, nil, false, true)
	}
	if ps.state() != scope.Down || n.HealthMultiplier() != 1 {
		t.Fatalf("after %d failed probes: %v, multiplier %d", n.cfg.DownAfter, ps.state(), n.HealthMultiplier())
	}
}

// Scheduling delay only adds to a sample: the EWMA and the coordinate
// take the minimum of the recent samples, so a few samples inflated by a
// starved host leave the RTT where the path puts it, and a fall shows at
// once.
func TestRTTFilter(t *testing.T) {
	n := bareNode(fastConfig("x", "x", nil))
	p := peer.ID("p")
	n.mu.Lock()
	n.peerLocked(p).site = "rome"
	n.mu.Unlock()
	ms := time.Millisecond
	for _, s := range []struct{ sample, want time.Duration }{
		{40 * ms, 40 * ms}, {40 * ms, 40 * ms}, {400 * ms, 40 * ms}, {900 * ms, 40 * ms}, {41 * ms, 40 * ms},
		{20 * ms, 34 * ms}, // 0.3 × 20 + 0.7 × 40
	} {
		n.byPeer[p].inflight = true
		n.observe(p, time.Now(), s.sample, nil, true, false)
		if got := n.byPeer[p].rtt; got.Round(ms) != s.want {
			t.Fatalf("after a sample of %v: RTT %v, want %v", s.sample, got, s.want)
		}
	}
	var f rttFilter
	for _, s := range []time.Duration{10 * ms, 50 * ms, 50 * ms, 50 * ms, 50 * ms} {
		f.add(s)
	}
	if got := f.add(50 * ms); got != 50*ms {
		t.Fatalf("a rise to 50 ms: %v once the window has passed the 10 ms sample", got)
	}
}

// An answer to a probe that overlapped a late tick still says the peer is
// up, but its RTT, which measured this node's queue, moves neither the
// EWMA nor the filter.
func TestStarvedSampleNotTaken(t *testing.T) {
	n := bareNode(fastConfig("x", "x", nil))
	p := peer.ID("p")
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.site = "rome"
	n.mu.Unlock()
	start := time.Now()
	ps.inflight = true
	n.observe(p, start, 40*time.Millisecond, nil, true, false)
	n.starvedAt = start.Add(time.Millisecond)
	ps.inflight, ps.misses = true, 1
	n.observe(p, start, 900*time.Millisecond, nil, true, false)
	if ps.rtt != 40*time.Millisecond || ps.misses != 0 || ps.state() != scope.Up {
		t.Fatalf("after an answer while starved: RTT %v, misses %d, %v; want 40ms, 0, up", ps.rtt, ps.misses, ps.state())
	}
	if got := ps.rtts.add(50 * time.Millisecond); got != 40*time.Millisecond {
		t.Fatalf("the filter took the starved sample: %v", got)
	}
}

// A site that loses its last connection with this node asks for a probe
// round at once (a heal closes the connection the cut stalled), whether
// held up (a cut too short to notice), suspect or down; a site still
// connected or one whose probe runs does not.
func TestLostConnectionAsksARound(t *testing.T) {
	cfg := fastConfig("paris", "x", nil)
	n := bareNode(cfg)
	rome := peer.ID("rome")
	n.mu.Lock()
	ps := n.peerLocked(rome)
	ps.site, ps.probed = "rome", true
	n.mu.Unlock()
	asked := func() bool {
		select {
		case <-n.probeNow:
			return true
		default:
			return false
		}
	}
	for _, c := range []struct {
		misses    int
		inflight  bool
		connected bool
		want      bool
	}{
		{misses: 0, want: true},                               // up: a flap too short to notice
		{misses: cfg.SuspectAfter, want: true},                // suspect
		{misses: cfg.DownAfter, want: true},                   // down
		{misses: cfg.DownAfter, connected: true, want: false}, // another connection is left
		{misses: cfg.DownAfter, inflight: true, want: false},  // its probe runs
	} {
		n.mu.Lock()
		ps.misses, ps.inflight = c.misses, c.inflight
		n.lostConnectionLocked(ps, c.connected)
		n.mu.Unlock()
		if got := asked(); got != c.want {
			t.Errorf("misses %d, inflight %v, connected %v: asked a round %v, want %v", c.misses, c.inflight, c.connected, got, c.want)
		}
	}
}

// The scheduler watch reads the runtime's histogram on every probe tick
// of every site: its reads after the first allocate nothing (the counts
// since the previous read are kept in a buffer of the watch), and the
// first read, with nothing to compare, gives 0.
func TestSchedWatchReadsWithoutAllocating(t *testing.T) {
	w := newSchedWatch()
	if p := w.p99(); p != 0 {
		t.Fatalf("first read: p99 %v, want 0", p)
	}
	if n := testing.AllocsPerRun(100, func() { w.p99() }); n != 0 {
		t.Fatalf("%.1f allocations per read, want 0", n)
	}
}
