package crdt

import (
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Heads held here, a walk not finished. A member's heads all among this
// site's heads, while this site holds more (a head the member's heads
// reach, or one of its own), mean that this site is ahead and the member
// merges the rest at this site's next push: it then holds more DAG nodes
// merged than the member. When the member has merged as many nodes or
// more, a head here was recorded or marked merged without its walk
// having merged what it reaches (a walk cut short by a replica put to
// sleep, a check of go-ds-crdt that raced with another walk): one group
// of 100 sites × 100,000 writes held heads [Y, X] at one member, [X]
// elsewhere, fewer nodes merged, asleep and clean, 2 entries missing for
// good. Every round found the heads different and pushed them both ways,
// which changed nothing: X is a head here and taken for merged, so its
// push does not wake the group, no head is orphaned (orphan.go) and the
// merged-count repair (compareProcessed) looks only at equal heads.
//
// The rounds now give each side the member's merged count for a group
// whose heads differ (exchanges.differ), and a heads push from that
// member is checked against it (heldBehind). Seen in pushes spanning more
// than a DigestInterval (two rounds), the group's marks are forgotten and
// its DAG walked again from its heads (Group.rewalk, at most once per
// orphanRewalkEvery): the walk merges what the heads reach and a head
// below another is replaced by it. A group whose heads match a member's
// records nothing and costs nothing: the check is a map lookup per push,
// and pushes follow differences.

// heldBehind checks a heads push from member p against the state above
// and, once it has lasted a DigestInterval, starts a rewalk of g that
// then delivers heads: true when it did (the caller does not deliver
// them).
func (m *Manager) heldBehind(g *Group, p peer.ID, heads []byte) bool {
	now := time.Now()
	theirs, ok := m.exchanges.memberMerged(g.name, p, now.Add(-m.digestKeep()).UnixNano())
	if !ok {
		return false
	}
	cids, ok := decodeHeads(heads)
	if !ok {
		return false
	}
	ctx := m.ctx
	ours := g.knownHeads(ctx)
	if len(ours) <= len(cids) {
		return false
	}
	for _, c := range cids {
		if !slices.Contains(ours, c) {
			return false
		}
	}
	mine := g.processedCount(ctx)
	if mine < 0 || theirs < mine {
		return false
	}
	if !g.orphans.heldDue(now, m.cfg.DigestInterval) {
		return false
	}
	if !g.rewalkLater(heads, "a member's heads are all heads here, and it merged as many nodes or more") {
		return false
	}
	m.metrics.heldRewalks.Inc()
	m.log.Info("a member's heads are all heads here: rewalking", "group", g.name,
		"heads", len(ours), "member_heads", len(cids), "merged", mine, "member_merged", theirs)
	return true
}

// heldDue records a push found by heldBehind at now and reports whether
// such pushes have come for longer than after, each within 3 × after of
// the previous one, and no rewalk ran within orphanRewalkEvery; when it
// reports true it starts the watch again and counts a rewalk.
func (w *orphanWatch) heldDue(now time.Time, after time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.heldLast.IsZero() || now.Sub(w.heldLast) > 3*after {
		w.heldSince = now
	}
	w.heldLast = now
	if now.Sub(w.heldSince) < after || now.Sub(w.rewalk) < orphanRewalkEvery {
		return false
	}
	w.heldSince, w.heldLast = time.Time{}, time.Time{}
	w.rewalk = now
	return true
}
