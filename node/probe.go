package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/multiformats/go-multiaddr"

	"cheops/scope"
)

// peerState is what this node knows of one peer. Guarded by Node.mu.
type peerState struct {
	cfg       *Config
	site      string // empty until its record arrives
	bootstrap bool
	started   time.Time
	addrs     []multiaddr.Multiaddr    // from its latest record
	misses    int                      // consecutive failed probes
	probed    bool                     // at least one probe answered
	inflight  bool                     // a probe is running
	rtt       time.Duration            // EWMA of the probes' filtered RTT
	rtts      rttFilter                // the last RTT samples (see rttFilter)
	lastSeen  time.Time                // last answered probe
	reported  map[string]time.Duration // RTTs the site measured to others (records of earlier versions)
	coord     *coordinate.Coordinate   // the network coordinate of its latest record
	nextDial  time.Time
	backoff   time.Duration
	// flagged: probe at the next round, whatever the rotation says (its
	// connection closed, or another site suspects it).
	flagged bool
	// dialing: its probe holds one of the node's dial slots.
	dialing bool
	// asking: a record exchange started after a probe runs (its record
	// had not arrived); askNext: not before then again, askWait after
	// that (askRecordLocked).
	asking  bool
	askNext time.Time
	askWait time.Duration
	// deferred: never reached, and due to be dialled when a slot frees.
	deferred bool
	// refused: its last probe failed with an answer from its side
	// (refused, reset), not for lack of time; tried is when the last
	// probe started. See probeLoop.
	refused bool
	tried   time.Time
	// changed is when state() last changed (zero: never since this node
	// started).
	changed time.Time
}

// state derives a site's state from its probe history: unknown until the
// first answer (or until DownAfter misses), then up, suspect after
// SuspectAfter consecutive misses, down after DownAfter.
func (ps *peerState) state() scope.State {
	switch {
	case ps.misses >= ps.cfg.DownAfter:
		return scope.Down
	case !ps.probed:
		return scope.Unknown
	case ps.misses >= ps.cfg.SuspectAfter:
		return scope.Suspect
	default:
		return scope.Up
	}
}

func (n *Node) peerLocked(p peer.ID) *peerState {
	ps, ok := n.byPeer[p]
	if !ok {
		ps = &peerState{cfg: &n.cfg}
		n.byPeer[p] = ps
		n.rot.add(p)
	}
	return ps
}

// SiteEvent says a site changed state.
type SiteEvent struct {
	Site  string
	Peer  peer.ID
	From  scope.State
	State scope.State
}

// Subscribe returns a channel of site state changes and a function that
// ends the subscription. Events are dropped, never queued without bound,
// when the reader falls behind (64 are buffered); readers that must not
// miss a change poll View as well. The channel is closed by the returned
// function or by Close.
func (n *Node) Subscribe() (<-chan SiteEvent, func()) {
	ch := make(chan SiteEvent, 64)
	n.mu.Lock()
	if n.watchers == nil {
		n.mu.Unlock()
		close(ch)
		return ch, func() {}
	}
	n.watchers[ch] = struct{}{}
	n.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			if _, ok := n.watchers[ch]; ok {
				delete(n.watchers, ch)
				close(ch)
			}
		})
	}
}

func (n *Node) notifyLocked(ev SiteEvent) {
	for w := range n.watchers {
		select {
		case w <- ev:
		default:
		}
	}
}

// probeLoop starts a probe round each ProbeInterval (see planRound and
// the design note in schedule.go for which peers a round probes), an
// early round of the peers in trouble only when probeNow asks (a site
// came back: others cut off by the same fault may have too), and between
// rounds redials every site that was reached once and is down as
// soon as its redial delay (RedialInterval, doubling to MaxRedialBackoff)
// has passed. A peer whose previous probe is still running (a timeout
// longer than the interval) is skipped, so a dead site never delays the
// probes of the live ones and never counts two misses for one silence.
//
// At most ProbeFanout probes dial a site never reached yet at once, fewer
// when such dials time out (see dialDone): a site that learns a hundred
// others at its start dials them a few at a time rather than in one burst
// of handshakes. A site reached before is redialled on its own pace
// (redialLater) whatever the others do: a dial across a cut hangs until
// ProbeTimeout and says nothing of this site's load, and after a heal
// every site cut off must be found at once.
//
// The loop's timer also measures how late this node runs: see
// starvedAfter and observe. It wakes the loop every RedialInterval while
// some peer is in trouble (down, refused, or waiting for a dial slot),
// and otherwise only at the next round or every calmTick, whichever is
// first: 100 idle in-process sites woke ~2,000 times a second (20 each;
// TestCalmProbeLoopWakesSeldom counted 82 in 4 s at one site) to find
// nothing to do. observe wakes it at once when a probe puts a peer in
// trouble (recheck).
func (n *Node) probeLoop(ctx context.Context) {
	defer n.wg.Done()
	redial := n.cfg.RedialInterval
	if redial <= 0 {
		redial = n.cfg.ProbeInterval
	}
	fast := min(n.cfg.ProbeInterval, redial)
	calm := n.calmTick(fast)
	timer := time.NewTimer(fast)
	defer timer.Stop()
	expected := time.Now().Add(fast) // when the timer is due
	var lastRound time.Time
	sched := newSchedWatch()
	early := false // a round asked for before its time (probeNow)
	for {
		n.stats.loopWakes.Add(1)
		now := time.Now()
		round := n.roundDue(now, lastRound)
		n.mu.Lock()
		var due []peer.ID
		troubled := false
		for p, ps := range n.byPeer {
			down := ps.state() == scope.Down
			if (ps.probed && down) || (ps.refused && !down) || ps.deferred {
				troubled = true
			}
			if round || early || ps.inflight {
				continue
			}
			redial := ps.probed && down && !now.Before(ps.nextDial)
			// Refused: probed again at the configured pace, however
			// stretched the rounds (see awareness.go).
			again := ps.refused && !down && now.Sub(ps.tried) >= n.cfg.ProbeInterval
			if redial || again || ps.deferred {
				due = append(due, p)
			}
		}
		switch {
		case round:
			lastRound = now
			due = planRound(n.rot, func(p peer.ID) probeNeed { return n.byPeer[p].need() }, n.cfg.ProbeFanout)
		case early:
			// Only the sites in trouble: the healthy ones keep their
			// turn, so events never add to the probes of the rotation.
			due = planRound(n.rot, func(p peer.ID) probeNeed { return n.byPeer[p].need() }, 0)
		}
		for _, p := range due {
			ps := n.byPeer[p]
			// A site never reached and not yet given up on (down): its
			// first dial is paced and given time (see probe).
			first := !ps.probed && ps.misses < n.cfg.DownAfter
			if first && n.host.Network().Connectedness(p) != network.Connected {
				if n.dials >= n.dialLimit {
					// Every slot is taken: dialled as soon as one frees.
					ps.deferred = true
					troubled = true
					continue
				}
				n.dials++
				ps.dialing = true
			}
			ps.inflight, ps.flagged, ps.deferred, ps.tried = true, false, false, now
			n.wg.Add(1)
			go n.probe(ctx, p, first)
		}
		nextRound := lastRound.Add(n.health.scale(n.cfg.ProbeInterval))
		n.mu.Unlock()
		if round {
			// A peer no longer probed (forgotten, or not probed since
			// probeReuse) keeps no stream.
			n.keptProbes.Prune(n.probeReuse())
		}
		early = false
		next := fast
		if !troubled {
			next = min(calm, max(nextRound.Sub(now), 0))
		}
		if next < time.Until(expected) {
			// Sooner than the timer is due: a peer in trouble, or the
			// round comes first. (Reset leaves no stale tick to receive.)
			timer.Reset(next)
			expected = time.Now().Add(next)
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			now := time.Now()
			n.queued(now, sched.p99())
			n.ticked(now, now.Sub(expected))
			timer.Reset(next)
			expected = now.Add(next)
		case <-n.probeNow:
			early = true
		case <-n.recheck:
		}
	}
}

// calmTick is how often the probe loop wakes while no peer is in trouble
// (see probeLoop): a quarter of ProbeInterval, and often enough that a
// stall of this node longer than starvedAfter still makes a tick late
// (half of it), never less than fast, the pace while a peer is in trouble.
func (n *Node) calmTick(fast time.Duration) time.Duration {
	return max(fast, min(n.cfg.ProbeInterval/4, n.starvedAfter()/2))
}

// starvedAfter is how late the probe loop's ticker must fire for this
// node to count as starved: a quarter of ProbeTimeout, at least 100 ms.
func (n *Node) starvedAfter() time.Duration {
	return max(n.cfg.ProbeTimeout/4, 100*time.Millisecond)
}

// dialDone adapts, after a dial to a site never reached, the number of
// such dials at once, as TCP its congestion window: one more after a dial
// that connected, up to ProbeFanout; half as many after one that timed
// out, at least one. A first dial times out when this site or the far one
// is too busy to finish the handshakes it started (a hundred in-process
// sites starting together on two cores): more at once would only time
// out too.
func (n *Node) dialDone(connected, timedOut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case connected:
		n.dialLimit = min(n.dialLimit+1, n.cfg.ProbeFanout)
	case timedOut:
		n.dialLimit = max(n.dialLimit/2, 1)
	}
}

// need says whether a round must probe the peer (see schedule.go).
func (ps *peerState) need() probeNeed {
	switch {
	case ps.inflight:
		return needBusy
	case ps.flagged || !ps.probed || ps.misses > 0:
		return needAttention
	default:
		return needNothing
	}
}

// disconnectedFrom is called when a connection with p closes. The peer is
// probed at the next round, in turn or not: a site that stopped or
// crashed closes its connections, and its first failed probe comes at
// once instead of when its turn comes round. A site not up is probed at
// once (see lostConnectionLocked).
func (n *Node) disconnectedFrom(p peer.ID) {
	connected := n.host.Network().Connectedness(p) == network.Connected
	n.mu.Lock()
	defer n.mu.Unlock()
	if ps, ok := n.byPeer[p]; ok {
		ps.flagged = true
		n.lostConnectionLocked(ps, connected)
	}
	if !connected {
		n.keptProbes.Drop(p) // its stream went with the connection
	}
}

// lostConnectionLocked asks for a probe round now when a site this node
// has reached has lost its last connection with it (connected false) and
// no probe of it runs: at a heal, the connection the cut stalled closes
// (under the probe that was waiting on it), and the site is dialled
// again at once instead of at the loop's next tick (down) or its next
// round (up or suspect: up to ProbeInterval times the health
// multiplier). An up site counts too: a cut shorter than the probes
// take to notice it (a flapping link) leaves the site up, and nothing
// else dials it (the catalog's links never dial): its catalog groups
// waited 0.7 s for the next round after such a heal, with every member
// up. Only a connection that was open asks: a failed dial never does, so
// a site that refuses is not dialled in a loop, and its redial delay
// still holds (ping).
func (n *Node) lostConnectionLocked(ps *peerState, connected bool) {
	if connected || ps.inflight || ps.state() == scope.Unknown {
		return
	}
	n.stats.lostRetries.Add(1)
	select {
	case n.probeNow <- struct{}{}:
	default:
	}
}

// connectedFrom is called when a connection with p opens, in either
// direction. A site this node holds down or suspect is up again at once:
// the handshake that opened the connection (TCP, then the secure channel
// with the peer's own key, then the muxer) is traffic both ways, proof
// enough of reachability, and a ping after it would only add round trips
// before requests may go there. A probe follows at once for its RTT;
// other sites cut off by the same fault are retried now too.
//
// A peer this node did not know (it dialled this site first, and its
// record has not arrived) is added, to be probed: if its record push was
// lost, the probes ask for it (askRecordLocked); otherwise nothing would,
// and this site would not know it until its next publication.
func (n *Node) connectedFrom(p peer.ID) {
	allowed := n.gater.allowed(p)
	n.mu.Lock()
	defer n.mu.Unlock()
	ps, ok := n.byPeer[p]
	if !ok {
		if allowed && p != n.host.ID() {
			n.peerLocked(p).flagged = true
		}
		return
	}
	before := ps.state()
	if before == scope.Up || before == scope.Unknown {
		return
	}
	ps.backoff, ps.nextDial = 0, time.Time{}
	ps.misses, ps.lastSeen = 0, time.Now().UTC()
	ps.changed = ps.lastSeen
	n.viewChangedLocked()
	ps.flagged = true // probed at once, for its RTT
	if ps.site != "" {
		n.log.Info("site state changed", "site", ps.site, "from", before, "to", scope.Up, "rtt", ps.rtt, "by", "connection")
		n.notifyLocked(SiteEvent{Site: ps.site, Peer: p, From: before, State: scope.Up})
	}
	n.retryOthersLocked(p)
	select {
	case n.probeNow <- struct{}{}:
	default:
	}
}

// retryOthersLocked is called when a site that was unreachable answers
// again: the network that cut it off has probably healed for other sites
// too, so every redial backoff is cleared and a probe round starts now,
// instead of each site being found at the end of its own backoff (up to
// MaxRedialBackoff after the heal).
func (n *Node) retryOthersLocked(back peer.ID) {
	for q, qs := range n.byPeer {
		if q != back && qs.backoff > 0 {
			qs.backoff, qs.nextDial = 0, time.Time{}
		}
	}
	select {
	case n.probeNow <- struct{}{}:
	default:
	}
}

// firstContact multiplies ProbeTimeout for the probes of a site never
// reached: its first dial and exchange set up a connection (handshakes,
// identify, the record pushed each way), which a hundred sites starting
// together on two cores take seconds to finish. Cut at ProbeTimeout, that
// work is lost and started again; nothing waits on a verdict about a site
// that was never up.
const firstContact = 3

// probe dials the peer if it is not connected (unless its redial backoff
// is running) and pings it, all within ProbeTimeout, firstContact times
// that for a site never reached (first), stretched by the health
// multiplier (probeTimeout).
func (n *Node) probe(ctx context.Context, p peer.ID, first bool) {
	defer n.wg.Done()
	n.probes.Add(1)
	start := time.Now()
	if n.notYetRedialled(p) {
		return
	}
	runCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, n.probeTimeout(first))
	defer cancel()
	wasConnected := n.host.Network().Connectedness(p) == network.Connected
	rtt, ans, err := n.ping(ctx, p, first)
	ok, late := err == nil, timedOut(ctx, err)
	if late {
		n.stats.timedOut.Add(1)
	}
	if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
		// The node is closing: this probe says nothing of the peer.
		n.mu.Lock()
		n.probeDoneLocked(n.peerLocked(p))
		n.mu.Unlock()
		return
	}
	n.mu.Lock()
	answeredBefore := n.peerLocked(p).probed
	n.mu.Unlock()
	n.observe(p, start, rtt, ans, ok, late)
	if ok && answeredBefore {
		// Not at the first answer: the records exchanged on connecting
		// may still be on their way.
		n.mu.Lock()
		n.askRecordLocked(runCtx, p, n.peerLocked(p))
		n.mu.Unlock()
	}
	if !ok && !late && wasConnected {
		// The probe's connection closed under it.
		connected := n.host.Network().Connectedness(p) == network.Connected
		n.mu.Lock()
		n.lostConnectionLocked(n.peerLocked(p), connected)
		n.mu.Unlock()
	}
}

// notYetRedialled ends, before it starts, the probe of a site never
// reached whose redial delay is running: nothing is tried, so nothing is
// counted. Counted as misses, such probes made a site that this node
// could not reach at its first attempt (a starved start) down within a
// few rounds without a second attempt, and then dialled with the short
// timeout of a site reached before. A site reached before counts the
// skipped probe as a miss (ping), so that its silence leads to down
// within DownBound whatever its redial delay.
func (n *Node) notYetRedialled(p peer.ID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerLocked(p)
	if ps.probed || !time.Now().Before(ps.nextDial) || n.host.Network().Connectedness(p) == network.Connected {
		return false
	}
	n.stats.skipped.Add(1)
	n.probeDoneLocked(ps)
	return true
}

// errRedialLater: a probe not tried, the peer's redial delay running.
var errRedialLater = errors.New("redial delay running")

// timedOut reports whether a probe failed for lack of time: its context's
// deadline, or a deadline or timeout inside libp2p (its TCP dial gives up
// after 5 s whatever the context).
func timedOut(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() != nil && context.Cause(ctx) != context.Canceled {
		return true
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, swarm.ErrDialTimeout) || (errors.As(err, &ne) && ne.Timeout())
}

// ping dials the peer if needed and makes the probe's exchange; it
// returns the RTT and the answer, or why it failed.
func (n *Node) ping(ctx context.Context, p peer.ID, first bool) (time.Duration, *probeAnswer, error) {
	if n.host.Network().Connectedness(p) != network.Connected {
		n.mu.Lock()
		wait := time.Now().Before(n.peerLocked(p).nextDial)
		n.mu.Unlock()
		if wait {
			n.stats.skipped.Add(1)
			return 0, nil, errRedialLater
		}
		if !first {
			n.stats.redials.Add(1)
		}
		// This node paces its own redials (redialLater); the swarm's
		// backoff (5 s growing quadratically to 5 min) would otherwise
		// keep a site that came back unreachable for minutes.
		if sw, ok := n.host.Network().(*swarm.Swarm); ok {
			sw.Backoff().Clear(p)
		}
		err := n.host.Connect(ctx, peer.AddrInfo{ID: p})
		if first {
			n.dialDone(err == nil, timedOut(ctx, err))
		}
		if err != nil {
			n.stats.dialFails.Add(1)
			if first {
				n.stats.firstFails.Add(1)
			}
			n.log.Debug("probe: dial failed", "peer", p, "err", err)
			n.redialLater(p)
			return 0, nil, fmt.Errorf("dial: %w", err)
		}
	}
	return n.exchange(ctx, p)
}

// redialLater doubles the delay before the next connection attempt, from
// RedialInterval up to MaxRedialBackoff, stretched by the health
// multiplier (see awareness.go).
func (n *Node) redialLater(p peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerLocked(p)
	first := n.cfg.RedialInterval
	if first <= 0 {
		first = n.cfg.ProbeInterval
	}
	ps.backoff = min(max(2*ps.backoff, first), n.cfg.MaxRedialBackoff)
	ps.nextDial = time.Now().Add(n.health.scale(ps.backoff))
}

// probeDoneLocked marks the end of a peer's probe and frees its dial slot.
func (n *Node) probeDoneLocked(ps *peerState) {
	ps.inflight = false
	if ps.dialing {
		ps.dialing = false
		n.dials--
	}
}

// observe takes the outcome of a probe started at start: the RTT
// (filtered by rttFilter before it moves the EWMA or the coordinate) and,
// from a site that speaks ProbeProtocol, its coordinate, which moves this
// site's own, and its suspicions. A probe that timed out is not counted
// as a miss when this node was starved while it ran (see ticked): a node
// too slow to run its own probes on time cannot tell a silent peer from
// its own slowness, and would otherwise mark live peers suspect and
// down, which costs more work (Lifeguard's argument, memberlist's
// "awareness"; see awareness.go). A probe refused or reset is a miss
// whatever this node's health: that answer came from the peer's side.
func (n *Node) observe(p peer.ID, start time.Time, rtt time.Duration, ans *probeAnswer, ok, timedOut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerLocked(p)
	n.probeDoneLocked(ps)
	// Its state, its RTT or this site's coordinate may change.
	n.viewChangedLocked()
	before := ps.state()
	starved := n.starvedAt.After(start)
	ps.refused = !ok && !timedOut
	if ok {
		if rtt > time.Duration(n.stats.slowest.Load()) {
			n.stats.slowest.Store(int64(rtt))
		}
		if !starved {
			rtt = ps.rtts.add(max(rtt, time.Microsecond)) // 0 means "not measured"
		}
	}
	if ok && ans != nil {
		if !starved && validCoord(ans.Coord, int(coordConfig().Dimensionality)) {
			if _, err := n.coord.Update(p.String(), ans.Coord, rtt); err == nil {
				n.samples++
			}
		}
		n.hintedLocked(ans.Suspects)
		if slices.Contains(ans.Suspects, n.cfg.Site) {
			n.stats.heardSelf.Add(1)
			n.healthLocked(+1, "suspected by a peer")
		}
	}
	if ok {
		if ps.backoff > 0 || before == scope.Down {
			n.retryOthersLocked(p)
		}
		ps.misses, ps.probed, ps.backoff, ps.nextDial = 0, true, 0, time.Time{}
		ps.lastSeen = time.Now().UTC()
		switch {
		case starved:
			// The sample measured this node's queue (see rttFilter).
		case ps.rtt == 0:
			ps.rtt = rtt
		default:
			a := n.cfg.RTTSmoothing
			ps.rtt = time.Duration(a*float64(rtt) + (1-a)*float64(ps.rtt))
		}
	} else if starved && timedOut {
		n.stats.failed.Add(1)
		n.stats.forgiven.Add(1)
		n.log.Debug("probe failed while this node was starved: not counted", "peer", p)
	} else {
		n.stats.failed.Add(1)
		n.stats.misses.Add(1)
		ps.misses++
	}
	after := ps.state()
	if after == scope.Down && before != scope.Down {
		n.stats.downs.Add(1)
	}
	if (after == scope.Down && before != scope.Down) || ps.refused {
		// Its redial or its next probe is due sooner than a calm probe
		// loop wakes (see probeLoop).
		select {
		case n.recheck <- struct{}{}:
		default:
		}
	}
	if before != after {
		ps.changed = time.Now().UTC()
	}
	if before != after && ps.site != "" {
		n.log.Info("site state changed", "site", ps.site, "from", before, "to", after, "rtt", ps.rtt)
		n.notifyLocked(SiteEvent{Site: ps.site, Peer: p, From: before, State: after})
	}
}

// rotates reports whether healthy peers are probed in turn rather than
// all every round (more than ProbeFanout peers). Called with n.mu held.
func (n *Node) rotates() bool { return len(n.byPeer) > n.cfg.ProbeFanout }

// suspicionsLocked lists the sites this node holds suspect, which it
// passes on in its probe answers when it rotates (otherwise every site
// probes every other each round and a hint would add nothing). A site
// that hears one probes the suspect at its next round and, if the suspect
// fails it too, passes its own suspicion on: the suspicion spreads as
// SWIM's piggybacked gossip does, without a publication to every site.
// Hints heard are not relayed as such: under load, when suspicions come
// and go, relays multiplied the probes.
func (n *Node) suspicionsLocked() []string {
	if !n.rotates() {
		return nil
	}
	var out []string
	for _, ps := range n.byPeer {
		if ps.site != "" && len(out) < maxSuspects && ps.state() == scope.Suspect {
			out = append(out, ps.site)
		}
	}
	slices.Sort(out)
	return out
}

// SiteStatus is one row of the membership table.
type SiteStatus struct {
	Site     string
	Peer     peer.ID
	State    scope.State
	RTT      time.Duration // smoothed; 0 for this site and for sites never reached
	LastSeen time.Time     // last answered probe; now for this site
	// Since is when this node last saw the site's state change (zero:
	// not since this node started; this node's start for itself).
	Since   time.Time
	Self    bool
	Started time.Time // when the site's agent started, from its record
	// Conflicts are the other peers that claimed this site's name and
	// were refused.
	Conflicts []peer.ID
	// Binding says what binds the name to Peer: BoundSelf,
	// BoundByConfig or BoundByFirstClaim.
	Binding string
}

// Sites lists every known site, this one included, by name.
func (n *Node) Sites() []SiteStatus {
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := []SiteStatus{{Site: n.cfg.Site, Peer: n.host.ID(), State: scope.Up, LastSeen: time.Now().UTC(), Since: n.started, Self: true, Started: n.started, Binding: BoundSelf}}
	for p, ps := range n.byPeer {
		if ps.site == "" {
			continue
		}
		out = append(out, SiteStatus{Site: ps.site, Peer: p, State: ps.state(), RTT: ps.rtt, LastSeen: ps.lastSeen, Since: ps.changed, Started: ps.started,
			Binding: n.bindings.byName[ps.site].Source})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	for _, c := range n.conflicts {
		for i := range out {
			if out[i].Site == c.Site {
				out[i].Conflicts = append(out[i].Conflicts, c.Claimant)
			}
		}
	}
	return out
}

// View is the membership snapshot the scope planner takes: every known
// site with its state, and RTTs (see the design note in coord.go). This
// site's are the ones it measured, or for a site it has not probed yet
// the distance between their coordinates; another site's are the
// distances from its coordinate to the others' (or, from a site of an
// earlier version, the RTTs its record reported).
//
// Design note — a view per request costs O(sites) map copies, not
// O(sites²) map writes. Every request the forwarder plans reads a view;
// building one writes every site's RTT to every other (and a coordinate
// distance each), 6 % of a remote GET's CPU on the sending agent with
// two sites. The view is built when it is asked for after what it is
// built from changed (a probe's outcome, a record, a binding forgotten:
// viewChangedLocked) and kept. Each caller gets a Sites map of its own
// (an O(sites) copy), so that a caller may mark a site down in it or
// drop one without it showing in another caller's view (none does
// today: the forwarder's withDown clones the map itself); the
// SiteInfo.RTT maps inside are shared by every caller since the last
// change and must not be written (nothing does: the planner only reads
// them).
func (n *Node) View() scope.View {
	v := n.view.Load()
	if v == nil {
		n.mu.Lock()
		if v = n.view.Load(); v == nil {
			built := n.buildViewLocked()
			v = &built
			n.view.Store(v)
		}
		n.mu.Unlock()
	}
	return scope.View{Local: v.Local, Sites: maps.Clone(v.Sites)}
}

// viewChangedLocked drops the kept view: a site's state, RTT, record or
// binding changed, or this site's coordinate moved. Called with n.mu
// held.
func (n *Node) viewChangedLocked() { n.view.Store(nil) }

// buildViewLocked builds the view (View). Called with n.mu held.
func (n *Node) buildViewLocked() scope.View {
	self := scope.SiteInfo{Name: n.cfg.Site, State: scope.Up, RTT: map[string]time.Duration{}}
	v := scope.View{Local: n.cfg.Site, Sites: map[string]scope.SiteInfo{}}
	var mine *coordinate.Coordinate
	if n.samples >= coordSettle {
		mine = n.coord.GetCoordinate()
	}
	coords := map[string]*coordinate.Coordinate{}
	for _, ps := range n.byPeer {
		if ps.site != "" && ps.coord != nil {
			coords[ps.site] = ps.coord
		}
	}
	for _, ps := range n.byPeer {
		if ps.site == "" {
			continue
		}
		info := scope.SiteInfo{Name: ps.site, State: ps.state(), RTT: map[string]time.Duration{}}
		for s, d := range ps.reported {
			info.RTT[s] = d
		}
		if len(ps.reported) == 0 && ps.coord != nil {
			for s, c := range coords {
				if s != ps.site {
					info.RTT[s] = ps.coord.DistanceTo(c)
				}
			}
		}
		v.Sites[ps.site] = info
		switch {
		case ps.probed:
			self.RTT[ps.site] = ps.rtt
		case mine != nil && ps.coord != nil:
			self.RTT[ps.site] = mine.DistanceTo(ps.coord)
		}
	}
	v.Sites[n.cfg.Site] = self
	return v
}

// PeerOf returns the peer id of a site: from its record once it has
// arrived (this site's own at once), else from the name's binding (the
// trust configuration, or a first claim persisted by an earlier run), so
// that a restarting site knows its peers before their records come.
func (n *Node) PeerOf(site string) (peer.ID, bool) {
	n.mu.Lock()
	p, ok := n.bySite[site]
	n.mu.Unlock()
	if ok {
		return p, true
	}
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	b, ok := n.bindings.byName[site]
	return b.Peer, ok
}

// SiteOf returns the site of a peer id: from its record once it has
// arrived, else from the binding of a name to it.
func (n *Node) SiteOf(p peer.ID) (string, bool) {
	if p == n.host.ID() {
		return n.cfg.Site, true
	}
	n.mu.Lock()
	site := ""
	if ps, ok := n.byPeer[p]; ok {
		site = ps.site // written by learn under n.mu
	}
	n.mu.Unlock()
	if site != "" {
		return site, true
	}
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	site, ok := n.bindings.byPeer[p]
	return site, ok
}
