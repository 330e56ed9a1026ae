package node

import (
	"math/rand/v2"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Design note — who is probed when.
//
// A site's states (Unknown, Up, Suspect, Down) say what this site can
// reach: the planner sends requests from here, straight to the chosen
// sites. They are this site's own verdicts, never taken from another
// site, so every site probes for itself. Probing every peer every round
// costs each site N-1 probes per interval: at 50 in-process sites the
// probes alone saturate two cores and time out, and the cluster never
// forms. A round therefore probes:
//
//   - every peer that needs attention: never answered yet, missed its
//     last probe (on the way to suspect or down), down (also redialled
//     between rounds), or flagged since the last round because its last
//     connection closed or another site said it suspects it;
//   - and up to Config.ProbeFanout of the healthy ones, taken in turn from
//     a random order fixed per site (new peers are inserted at random
//     places). With at most ProbeFanout healthy peers that is all of them,
//     every round, as before; with more, each is probed at least every
//     ⌈healthy/ProbeFanout⌉ rounds.
//
// SuspectAfter and DownAfter count consecutive failed probes of one peer,
// and a peer that failed one is probed every round, so once a site falls
// silent it goes suspect and down after the same delays as in a small
// cluster. What rotation adds is the wait for the first failed probe: at
// most ⌈healthy/ProbeFanout⌉ rounds when nothing else gives the failure
// away; nothing when the site's connections close (a crash, a stop, a
// reset: the kernel closes its sockets, the flag above catches it), and
// a few rounds when the site is cut off silently, since some site probes
// it in any round and passes its suspicion on in the answers to the
// probes it receives (suspicionsLocked, as SWIM piggybacks on pings):
// each site that hears it probes the suspect at its next round, and
// passes its own suspicion on in turn. A suspicion only makes the others
// probe the site: it changes no state by itself.
//
// No indirect probes (SWIM's ping-req through k other sites): they exist
// to keep one site's bad link from marking a peer dead for the whole
// cluster, and here no site marks anything for another. An answer relayed
// by a third site would say the peer lives, not that this site can send
// it requests, which is what Up promises the planner.

// rotation is the order in which a site probes its healthy peers: a random
// permutation, walked round robin. Not safe for concurrent use (Node.mu
// guards it).
type rotation struct {
	order []peer.ID
	next  int // index in order of the next peer to take
	rng   *rand.Rand
}

func newRotation(rng *rand.Rand) *rotation { return &rotation{rng: rng} }

// add inserts p at a random place in the order. The peers the cursor has
// yet to reach keep their turn, and p comes at most one pass later.
func (r *rotation) add(p peer.ID) {
	i := r.rng.IntN(len(r.order) + 1)
	r.order = append(r.order, "")
	copy(r.order[i+1:], r.order[i:])
	r.order[i] = p
	if i < r.next {
		r.next++
	}
}

// take returns up to k peers for which eligible is true, in order from the
// cursor, wrapping around at most once, and moves the cursor past the last
// peer it looked at. A peer that is not eligible is passed over without
// counting; it keeps its place for the next pass.
func (r *rotation) take(k int, eligible func(peer.ID) bool) []peer.ID {
	var out []peer.ID
	for range len(r.order) {
		if len(out) >= k {
			break
		}
		p := r.order[r.next]
		r.next = (r.next + 1) % len(r.order)
		if eligible(p) {
			out = append(out, p)
		}
	}
	return out
}

// probeNeed is what a round's plan needs to know of one peer.
type probeNeed int

const (
	needNothing   probeNeed = iota // healthy: probed in turn
	needAttention                  // probed this round
	needBusy                       // its last probe still runs: skipped
)

// planRound decides which peers a probe round starts: every peer that
// needs attention, then up to fanout healthy peers taken in turn from the
// rotation. It is a pure function of its inputs (and the rotation's
// cursor), so the schedule is tested without sockets or clocks.
func planRound(rot *rotation, need func(peer.ID) probeNeed, fanout int) []peer.ID {
	var out []peer.ID
	for _, p := range rot.order {
		if need(p) == needAttention {
			out = append(out, p)
		}
	}
	return append(out, rot.take(fanout, func(p peer.ID) bool { return need(p) == needNothing })...)
}
