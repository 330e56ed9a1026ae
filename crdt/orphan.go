package crdt

import (
	"context"
	"slices"
	"sync"
	"time"

	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-ds-crdt/pb"
	"google.golang.org/protobuf/proto"
)

// An orphaned branch top: a block go-ds-crdt marked merged that is not
// one of the replica's heads and that no head reaches. go-ds-crdt marks
// each node of a walk merged before it walks the node's children, and
// records the branch's top as a head only once the walk reaches known
// history; a walk that ends early (a block fetch that fails marks the
// replica dirty, and the repair then walks only from the heads, finds
// nothing to do and marks it clean) leaves the top marked and the
// blocks below it unmerged. Every later announcement of the top is then
// skipped as merged, here (Group.merged) and in go-ds-crdt: a member
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

// orphanWatch remembers the first head announced that was marked merged
// here without being a head, and since when.
type orphanWatch struct {
	mu     sync.Mutex
	head   cid.Cid
	since  time.Time
	rewalk time.Time // the last rewalk
}

// orphanRewalkEvery bounds how often one group's marks are forgotten.
const orphanRewalkEvery = time.Minute

// orphaned reports whether an announcement names, for longer than a
// DigestInterval, a head marked merged that is not one of this site's
// heads (see above).
func (g *Group) orphaned(ctx context.Context, data []byte) bool {
	var msg pb.CRDTBroadcast
	if err := proto.Unmarshal(data, &msg); err != nil || len(msg.GetHeads()) == 0 {
		return false
	}
	var ours []cid.Cid
	for i, h := range msg.GetHeads() {
		c, err := cid.Cast(h.GetCid())
		if err != nil {
			return false
		}
		if i == 0 {
			ours = g.knownHeads(ctx)
		}
		if slices.Contains(ours, c) {
			continue
		}
		key := g.crdtPrefix().ChildString(processedNamespace).ChildString(dshelp.MultihashToDsKey(c.Hash()).String())
		if ok, err := g.m.cfg.Datastore.Has(ctx, key); err != nil || !ok {
			continue
		}
		w := &g.orphans
		w.mu.Lock()
		now := time.Now()
		if !w.head.Equals(c) {
			w.head, w.since = c, now
			w.mu.Unlock()
			continue
		}
		due := now.Sub(w.since) >= g.m.cfg.DigestInterval && now.Sub(w.rewalk) >= orphanRewalkEvery
		if due {
			w.head = cid.Undef
		}
		w.mu.Unlock()
		if due && !g.reaches(ctx, ours, c) {
			w.mu.Lock()
			w.rewalk = now
			w.mu.Unlock()
			return true
		}
	}
	return false
}

// maxReachWalk bounds the blocks reaches reads.
const maxReachWalk = 4096

// reaches reports whether target is one of heads or below one of them,
// walking down from them to target's height; true too when it cannot
// tell (target's block is not here, or the walk would be too long): a
// head only below this site's comes from a member behind, not from an
// orphaned branch.
func (g *Group) reaches(ctx context.Context, heads []cid.Cid, target cid.Cid) bool {
	tm, ok := g.blockMeta(ctx, target)
	if !ok {
		return true
	}
	seen := map[cid.Cid]bool{}
	queue := slices.Clone(heads)
	for len(queue) > 0 {
		c := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if c.Equals(target) {
			return true
		}
		if seen[c] {
			continue
		}
		seen[c] = true
		if len(seen) > maxReachWalk {
			return true
		}
		m, ok := g.blockMeta(ctx, c)
		if !ok || m.height <= tm.height {
			continue
		}
		queue = append(queue, m.links...)
	}
	return false
}

// rewalk forgets the group's merged marks and has it repaired (see
// above). A replica at work is left alone: the member's next
// announcement tries again.
func (g *Group) rewalk(ctx context.Context) {
	g.mu.Lock()
	if g.closed || g.rep != nil && !g.idleLocked(ctx, true) {
		g.mu.Unlock()
		return
	}
	if g.rep != nil {
		g.closeLocked()
	}
	// Asleep, under g.mu: nothing opens the replica meanwhile.
	err := forgetProcessed(ctx, g.m.cfg.Datastore, g.crdtPrefix().ChildString(processedNamespace))
	if err == nil {
		err = g.m.cfg.Datastore.Put(ctx, g.crdtPrefix().ChildString(dirtyKey), nil)
	}
	g.mergedNodes.set(0)
	if err != nil {
		// Some marks may be gone: counted again when next needed.
		g.mergedNodes.mu.Lock()
		g.mergedNodes.known = false
		g.mergedNodes.mu.Unlock()
	}
	g.lastDigest.Store(nil)
	g.sleptDirty.Store(true)
	g.mu.Unlock()
	if err != nil {
		g.m.log.Warn("forget the merged marks of a group with an orphaned branch", "group", g.name, "err", err)
		return
	}
	g.m.metrics.rewalks.Inc()
	g.m.log.Warn("a member keeps announcing a head merged here that no head reaches: walking the group again", "group", g.name)
	g.wakeDirty()
}
