package crdt

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
)

// An orphaned branch top: a block go-ds-crdt marked merged that is not
// one of the replica's heads and that no head reaches. go-ds-crdt marks
// each node of a walk merged before it walks the node's children, and
// records the branch's top as a head only once the walk reaches known
// history; a walk that ends early (a block fetch that fails marks the
// replica dirty, and the repair then walks only from the heads, finds
// nothing to do and marks it clean) leaves the top marked and the
// blocks below it unmerged. Every later announcement of the top is then
// skipped as merged, here (Group.deliver) and in go-ds-crdt: a member
// whose heads were [X, Y] against [Y] here stayed so for minutes with
// every pair connected (96 entries missing at 100 sites × 100,000
// writes).
//
// A member that keeps announcing, for longer than a DigestInterval, a
// head marked merged here that is not a head here, is taken to point at
// such a top (a head merely below one of this site's heads comes from a
// member behind, which catches up at the next exchange and stops
// announcing it). The group's merged marks are then forgotten and the
// replica repaired, as after an unclean stop (Group.open): the repair
// marks again what the heads reach, and the top, unmarked, is walked
// down to known history at its next announcement. Merging is
// idempotent, so a false alarm costs one walk of the group's DAG.

// orphanWatch remembers, for a few heads announced that were marked
// merged here without being heads, since when; and the last rewalk.
type orphanWatch struct {
	mu     sync.Mutex
	seen   map[cid.Cid]time.Time // head → first seen, at most maxOrphanWatch
	rewalk int64                 // the last rewalk (unix ns; 0: none)
	// running: a rewalk goroutine runs (rewalkLater).
	running atomic.Bool
}

// maxOrphanWatch bounds the heads watched per group: a group has a few
// members, each announcing a few heads; past it the oldest entry goes.
const maxOrphanWatch = 8

// orphanRewalkEvery bounds how often one group's marks are forgotten.
const orphanRewalkEvery = time.Minute

// orphaned reports whether an announcement names, for longer than a
// DigestInterval, a head marked merged that is not one of this site's
// heads (see above); marked, whether every head it names is merged here
// (one of a sleeping group's cached heads, or marked merged).
//
// The merged mark is read first, and this site's heads only for a head
// that has one: most announcements carry a new delta, which no mark
// names yet, and reading the heads of a sleeping group whose digest is
// not cached is a datastore scan (the heads first, at every
// announcement, were 1.5 % of the CPU of 100 sites × 20,000 writes).
func (g *Group) orphaned(ctx context.Context, heads []cid.Cid) (orphan, marked bool) {
	if len(heads) > 0 && g.mergedNodes.none() {
		// A group that merged no node here marks none: at 100 sites most
		// announcements are a new group's first (the reads of the marks
		// here were 2.2 % of the CPU of 100 × 40,000 writes).
		return false, false
	}
	var ours []cid.Cid
	read := false
	marked = true
	// A sleeping group's own heads, as its digest cached them, are merged
	// blocks and heads here: neither orphans nor a datastore read.
	known, _ := g.sleepingHeads()
	for _, c := range heads {
		if slices.Contains(known, c) {
			continue
		}
		if ok, err := g.m.cfg.Datastore.Has(ctx, g.processedKey(c)); err != nil || !ok {
			marked = false
			continue
		}
		if !read {
			ours, read = g.knownHeads(ctx), true
		}
		if slices.Contains(ours, c) {
			continue
		}
		now := time.Now()
		if g.orphans.due(c, now, g.m.cfg.DigestInterval) && !g.reaches(ctx, ours, c) {
			g.orphans.mu.Lock()
			g.orphans.rewalk = now.UnixNano()
			g.orphans.mu.Unlock()
			return true, false
		}
	}
	return false, marked
}

// due records that head c, marked merged and not a head here, was
// announced at now, and reports whether it has been for longer than
// after and no rewalk ran within orphanRewalkEvery; a head found due is
// forgotten (watched again from its next announcement).
func (w *orphanWatch) due(c cid.Cid, now time.Time, after time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	since, ok := w.seen[c]
	if !ok {
		if w.seen == nil {
			w.seen = map[cid.Cid]time.Time{}
		}
		if len(w.seen) >= maxOrphanWatch {
			var oldest cid.Cid
			for h, t := range w.seen {
				if !oldest.Defined() || t.Before(w.seen[oldest]) {
					oldest = h
				}
			}
			delete(w.seen, oldest)
		}
		w.seen[c] = now
		return false
	}
	if now.Sub(since) < after || now.UnixNano()-w.rewalk < int64(orphanRewalkEvery) {
		return false
	}
	delete(w.seen, c)
	return true
}

// maxReachWalk bounds the blocks descends reads.
const maxReachWalk = 4096

// reaches reports whether target is one of heads or below one of them;
// true too when it cannot tell (descends): a head only below this
// site's comes from a member behind, not from an orphaned branch.
func (g *Group) reaches(ctx context.Context, heads []cid.Cid, target cid.Cid) bool {
	found, known := g.descends(ctx, heads, target)
	return found || !known
}

// descends walks down from heads, through the block metas, to target's
// height and reports whether target is one of heads or below one of
// them; known is false when it cannot tell (target's block is not here,
// or the walk would read more than maxReachWalk blocks).
func (g *Group) descends(ctx context.Context, heads []cid.Cid, target cid.Cid) (found, known bool) {
	tm, ok := g.blockMeta(ctx, target)
	if !ok {
		return false, false
	}
	seen := map[cid.Cid]bool{}
	queue := slices.Clone(heads)
	for len(queue) > 0 {
		c := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if c.Equals(target) {
			return true, true
		}
		if seen[c] {
			continue
		}
		seen[c] = true
		if len(seen) > maxReachWalk {
			return false, false
		}
		m, ok := g.blockMeta(ctx, c)
		if !ok || m.height <= tm.height {
			continue
		}
		queue = append(queue, m.links...)
	}
	return false, true
}

// rewalkLater runs rewalk, then hands heads (the announcement that
// found the orphaned top) to the replica, on a goroutine of its own: a
// link's reader must not forget a group's marks (a scan and a batch of
// deletes under the group's mutex, which every acquire's evict takes).
// One runs per group; false when one already runs or the manager closes
// (the announcement is then delivered as usual).
func (g *Group) rewalkLater(heads []byte) bool {
	if !g.orphans.running.CompareAndSwap(false, true) {
		return false
	}
	if !g.m.enter() {
		g.orphans.running.Store(false)
		return false
	}
	go func() {
		defer g.m.wg.Done()
		defer g.orphans.running.Store(false)
		g.rewalk(g.m.ctx)
		if _, err := g.deliver(g.m.ctx, heads, 0, true, wakeOrphan); err != nil && g.m.ctx.Err() == nil {
			g.m.log.Debug("deliver heads after a rewalk", "group", g.name, "err", err)
		}
	}()
	return true
}

// rewalk forgets the group's merged marks and has it repaired (see
// above). A replica at work is left alone: the member's next
// announcement found due tries again (the rewalk runs off the link's
// reader, which may hand the replica another announcement meanwhile).
func (g *Group) rewalk(ctx context.Context) {
	g.mu.Lock()
	if g.closed || g.rep != nil && !g.idleLocked(ctx, true) {
		g.mu.Unlock()
		// Not done: the next announcement found due may try at once.
		g.orphans.mu.Lock()
		g.orphans.rewalk = 0
		g.orphans.mu.Unlock()
		return
	}
	if g.rep != nil {
		g.closeLocked()
	}
	// Asleep, under g.mu: nothing opens the replica meanwhile.
	err := g.forgetMerged(ctx)
	g.mu.Unlock()
	if err != nil {
		g.m.log.Warn("forget the merged marks of a group with an orphaned branch", "group", g.name, "err", err)
		return
	}
	g.m.metrics.rewalks.Inc()
	g.m.log.Warn("a member keeps announcing a head merged here that no head reaches: walking the group again", "group", g.name)
	g.wakeDirty()
}
