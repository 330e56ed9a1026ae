package node

import (
	"runtime/metrics"
	"slices"
	"time"
)

// Design note — a starved site slows its own probing (Lifeguard).
//
// A site whose process does not get the CPU it needs (an overloaded
// host, a hundred in-process sites on two cores) sends its probes late,
// reads their answers late, and answers the probes of others late. With
// fixed timeouts its probes fail, the peers it probes go suspect then
// down, and a peer in trouble is probed every round and redialled
// between rounds: the failures multiply the probes, which starves the
// site more. Measured under `go test -race -run TestManySites` at load
// average 11 on two cores: each site's probe loop ran up to 6 s late,
// 80% of the probes failed (most ran out of time), and after two
// minutes 190 of the 240 pairs were still not up; nothing brought them
// back while the load lasted.
//
// Lifeguard (Dadgar et al., 2018; hashicorp/memberlist's "awareness")
// gives each site a local health score, raised on evidence that the
// site itself is slow, lowered when it keeps time, and stretches the
// site's own probing by score+1 (the health multiplier, up to
// MaxHealthMultiplier): the interval between rounds, the probe timeout
// (and the deadlines of the other membership exchanges: records pushed,
// sites asked for), the delay between redials, and the refresh of its
// record and its asks for sites (announceLoop). A starved site then probes less, gives its
// probes time to finish and declares no one down on its own slowness;
// the load it adds falls instead of growing. Evidence of slowness, each
// raising the score by one:
//
//   - the probe loop's ticker fired later than starvedAfter (the
//     process, or this goroutine, did not run on time);
//   - a peer's probe answer lists this site among its suspects (others
//     find it slow: memberlist raises the score when it must refute a
//     suspicion of itself).
//
// A failed probe alone is not evidence: a peer that crashed or was cut
// off fails too, and must be found down within DownBound. The score
// falls by one per stretched interval (multiplier × ProbeInterval) in
// which no tick was late: a site that keeps time again is back to its
// configured probing after 35 intervals at most (8+7+…+2), 70 s with
// the defaults. Falling faster (one per ProbeInterval) let the
// multiplier drop between the bursts of a lasting starvation (ticks 2–6
// s late about every second under TestManySites at load 15) and the
// probes, whose answers took up to 7 s, timed out again.
//
// A peer whose last probe was refused or reset (an answer from its
// side, which no slowness of this site produces) is probed again at the
// configured ProbeInterval, between the stretched rounds: a stopped site
// is still found down within DownBound plus one stretched interval.
//
// The site also counts as starved, without a rise of its score, when 1%
// of the goroutines made runnable since the previous tick waited longer
// than starvedAfter to run (the Go scheduler's latency histogram: see
// queued). The ticker alone missed most of the starvation: a timer fires
// on time while the goroutines that carry the probes' bytes wait in the
// run queue (answers took up to 12 s under TestManySites at load 12–15
// with the probe loop never more than 5 s late).
//
// Two more rules keep a starved site's own slowness out of its
// verdicts: a probe that ran out of time (its deadline, or one inside
// libp2p: timedOut) while the site was starved is not a miss (observe;
// a probe refused or reset is, whatever the site's
// health: a stopped site must still be found down), and an RTT sample
// taken while starved is not used (it measured this site's queue, not
// the path).
//
// A peer's verdict needs DownAfter consecutive misses, each a probe
// round of the stretched interval, so a starved site waits up to
// multiplier × DownBound before it says a silent peer is down, which is
// Lifeguard's longer suspicion timeout for a site that cannot trust its
// own clock. Lifeguard also shortens that wait as other sites confirm
// the suspicion; here a site's states are its own verdicts, never taken
// from another site (see schedule.go), so other sites' suspicions only
// make this site probe the peer sooner.

// MaxHealthMultiplier bounds the local health multiplier: a site starved
// for long probes at most this many times slower (memberlist's
// AwarenessMaxMultiplier).
const MaxHealthMultiplier = 8

// health is a site's local health score (see the design note above), 0
// when it keeps time, at most MaxHealthMultiplier-1. Not safe for
// concurrent use (Node.mu guards it).
type health struct{ score int }

// apply adds delta to the score, within its bounds, and reports whether
// the score changed.
func (h *health) apply(delta int) bool {
	old := h.score
	h.score = min(max(h.score+delta, 0), MaxHealthMultiplier-1)
	return h.score != old
}

// multiplier is score+1: 1 when the site keeps time.
func (h *health) multiplier() int { return h.score + 1 }

// scale stretches d by the multiplier.
func (h *health) scale(d time.Duration) time.Duration { return d * time.Duration(h.multiplier()) }

// healthLocked applies delta to this node's health score and logs a
// change of multiplier.
func (n *Node) healthLocked(delta int, why string) {
	if n.health.apply(delta) {
		m := int64(n.health.multiplier())
		n.stats.multiplier.Store(m)
		if m > n.stats.peak.Load() {
			n.stats.peak.Store(m)
		}
		n.log.Debug("local health changed", "multiplier", n.health.multiplier(), "why", why)
	}
}

// ticked takes a tick of the probe loop at now, late by late beyond its
// period. Later than starvedAfter, the node counts as starved from now
// (see observe) and its health score rises; on time, the score falls by
// one if no tick was late, and it did not fall, for a stretched
// ProbeInterval (multiplier × ProbeInterval).
func (n *Node) ticked(now time.Time, late time.Duration) {
	if late > time.Duration(n.stats.lateMax.Load()) {
		n.stats.lateMax.Store(int64(late))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if late > n.starvedAfter() {
		n.stats.lateTicks.Add(1)
		n.starvedAt = now
		n.healthLocked(+1, "probe loop late")
		return
	}
	if quiet := n.health.scale(n.cfg.ProbeInterval); now.Sub(n.starvedAt) >= quiet && now.Sub(n.healthKept) >= quiet {
		n.healthKept = now
		n.healthLocked(-1, "kept time")
	}
}

// queued takes the 99th percentile of the Go scheduler's latencies
// since the previous tick (see schedWatch): longer than starvedAfter,
// the node counts as starved from now (its timed-out probes are not
// misses, its RTT samples are dropped, its score does not fall), but
// the score does not rise: under -race on a loaded machine the
// percentile stayed above it for minutes, and a multiplier held at its
// maximum slowed the first contacts of the sites that started last more
// than it spared work.
func (n *Node) queued(now time.Time, p99 time.Duration) {
	if p99 <= n.starvedAfter() {
		return
	}
	n.stats.queuedTicks.Add(1)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.starvedAt = now
}

// roundDue reports whether a probe round starts at now, the previous one
// having started at last: after ProbeInterval stretched by the health
// multiplier.
func (n *Node) roundDue(now, last time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return now.Sub(last) >= n.health.scale(n.cfg.ProbeInterval)
}

// stretched is d times the health multiplier.
func (n *Node) stretched(d time.Duration) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.health.scale(d)
}

// probeTimeout is how long a probe, or another exchange of membership
// (a record pushed, sites asked for), may take now: ProbeTimeout stretched
// by the health multiplier, and for a site never reached by at least
// firstContact (the multiplier already says how slow this site is; the
// product would hold a dial slot for minutes towards a site that is not
// there).
func (n *Node) probeTimeout(first bool) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := n.health.multiplier()
	if first {
		m = max(m, firstContact)
	}
	return time.Duration(m) * n.cfg.ProbeTimeout
}

// HealthMultiplier is this site's local health multiplier: 1 when it
// keeps time, up to MaxHealthMultiplier when it is starved (its probe
// rounds, probe timeouts and redials are stretched by it).
func (n *Node) HealthMultiplier() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.health.multiplier()
}

// schedWatch reads the Go scheduler's latency histogram (how long
// goroutines waited to run once runnable) and gives its 99th percentile
// over the goroutines that became runnable since the previous read. Not
// safe for concurrent use (the probe loop alone reads it).
type schedWatch struct {
	sample [1]metrics.Sample
	// prev is the histogram's counts at the previous read; delta those
	// since, kept between reads (each read would otherwise allocate a
	// slice of the histogram's ~160 buckets: 2 % of the bytes 100
	// in-process sites allocated while writing).
	prev, delta []uint64
}

func newSchedWatch() *schedWatch {
	w := &schedWatch{}
	w.sample[0].Name = "/sched/latencies:seconds"
	return w
}

// p99 is the 99th percentile (a bucket's lower bound) of the scheduling
// latencies since the previous call; 0 when none, or when the runtime
// does not publish the histogram.
func (w *schedWatch) p99() time.Duration {
	metrics.Read(w.sample[:])
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.sample[0].Value.Float64Histogram()
	w.delta = slices.Grow(w.delta[:0], len(h.Counts))[:len(h.Counts)]
	delta := w.delta
	var total uint64
	for i, c := range h.Counts {
		if i < len(w.prev) && c >= w.prev[i] {
			c -= w.prev[i]
		}
		delta[i] = c
		total += c
	}
	first := w.prev == nil
	w.prev = append(w.prev[:0], h.Counts...)
	if total == 0 || first {
		return 0
	}
	want, acc := total-total/100, uint64(0)
	for i, d := range delta {
		if acc += d; acc >= want {
			if low := h.Buckets[i]; low > 0 {
				return time.Duration(low * float64(time.Second))
			}
			return 0
		}
	}
	return 0
}
