package crdt

import (
	"context"
	"fmt"
	"slices"

	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
)

// The heads a group is put to sleep with, checked.
//
// A replica's heads should be its DAG's frontier: no head below another,
// each merged. Two ways to leave it otherwise are known: a local write
// during the merge of a replica's first heads (seed.go keeps them apart),
// and a walk that records its root as a head once it reaches the bottom
// while a local write built on that root meanwhile (a repair's walk, or a
// branch of an announcement that reached known history after another
// branch did). A head below another then stays a head for good: the
// other members hold the frontier alone, anti-entropy finds the heads
// different at every round and pushes them both ways, and nothing
// changes, since every head pushed is a head here already (a sleeping
// group even takes a head of its own for merged without reading its
// mark, Group.deliver). The group of 100 sites × 100,000 writes whose 2
// entries never arrived held heads [Y, X] with Y below X, one node
// merged of two.
//
// So when an idle replica closes (closeLocked), its heads are checked: a
// head that another head reaches is dropped from the stored heads (the
// write go-ds-crdt's Replace would have made), and if a head, kept or
// dropped, is not marked merged, the group's marks are forgotten and its
// DAG merged again from the heads (forgetMerged, as after an unclean
// stop): whatever left the head unmerged, the repair merges every node
// the heads reach. One head, the usual case, costs a mark's read; several
// heads, a walk down to the lowest head's height, on the block metas.

// frontierCheck checks the heads of a replica just closed (called with
// g.mu held, the replica closed) and returns the heads to keep; repair
// reports that the group's marks were forgotten (a repair is due when it
// next wakes).
func (g *Group) frontierCheck(ctx context.Context, heads []cid.Cid) (kept []cid.Cid, repair bool) {
	unmerged := false
	for _, h := range heads {
		if ok, err := g.m.cfg.Datastore.Has(ctx, g.processedKey(h)); err == nil && !ok {
			unmerged = true
		}
	}
	kept = heads
	if len(heads) > 1 {
		var below []cid.Cid
		for _, h := range heads {
			for _, o := range heads {
				if !o.Equals(h) && !slices.Contains(below, o) && g.above(ctx, o, h) {
					below = append(below, h)
					break
				}
			}
		}
		if len(below) > 0 {
			if err := g.dropHeads(ctx, below); err != nil {
				g.m.log.Warn("drop heads below another head", "group", g.name, "err", err)
			} else {
				kept = slices.DeleteFunc(slices.Clone(heads), func(c cid.Cid) bool { return slices.Contains(below, c) })
				g.m.metrics.redundantHeads.Add(float64(len(below)))
				g.m.log.Info("dropped heads below another head", "group", g.name, "dropped", below, "kept", kept)
			}
		}
	}
	if !unmerged {
		return kept, false
	}
	if err := g.forgetMerged(ctx); err != nil {
		g.m.log.Warn("forget the merged marks of a group with a head not merged", "group", g.name, "err", err)
	}
	g.m.metrics.unmergedHeads.Inc()
	g.m.log.Warn("a head is not merged: the group is merged again from its heads", "group", g.name, "heads", heads)
	return kept, true
}

// above reports whether target, another block than top, is below top;
// false when it cannot tell (descends).
func (g *Group) above(ctx context.Context, top, target cid.Cid) bool {
	found, known := g.descends(ctx, []cid.Cid{top}, target)
	return found && known && !top.Equals(target)
}

// dropHeads deletes heads from the replica's stored heads (while it is
// closed: go-ds-crdt reads them when it opens).
func (g *Group) dropHeads(ctx context.Context, heads []cid.Cid) error {
	b, err := g.m.cfg.Datastore.Batch(ctx)
	if err != nil {
		return fmt.Errorf("drop heads: %w", err)
	}
	prefix := g.crdtPrefix().ChildString(headsNamespace)
	for _, h := range heads {
		if err := b.Delete(ctx, prefix.Child(dshelp.MultihashToDsKey(h.Hash()))); err != nil {
			return fmt.Errorf("drop head %s: %w", h, err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("drop heads: %w", err)
	}
	return nil
}

// heldBelow reports whether a member's announcement that brings nothing
// new (every head merged here) shows that one of this site's heads is
// below one of the member's: every head it names is a head here, this
// site holds more, and one of those others is below a head named. (A
// member whose heads are only fewer, none above the others, is behind:
// it catches up at the next exchange.) A group kept awake by the pushes
// of its members would otherwise never go to sleep with the check of
// closeLocked.
func (g *Group) heldBelow(ctx context.Context, theirs []cid.Cid) bool {
	ours := g.knownHeads(ctx)
	if len(ours) <= len(theirs) {
		return false
	}
	for _, c := range theirs {
		if !slices.Contains(ours, c) {
			return false
		}
	}
	for _, h := range ours {
		if slices.Contains(theirs, h) {
			continue
		}
		for _, c := range theirs {
			if g.above(ctx, c, h) {
				return true
			}
		}
	}
	return false
}

// checkFrontierLater checks the group's heads (frontierCheck) on a
// goroutine of its own, as rewalkLater does: an open replica is closed
// first if it is idle (a busy one is left alone: the member's next push
// tries again), a sleeping group's stored heads are checked as they are.
func (g *Group) checkFrontierLater() {
	// One goroutine at a time fixes a group's heads: this check or an
	// orphan rewalk (orphan.go), which share the flag.
	if !g.orphans.running.CompareAndSwap(false, true) {
		return
	}
	if !g.m.enter() {
		g.orphans.running.Store(false)
		return
	}
	go func() {
		defer g.m.wg.Done()
		defer g.orphans.running.Store(false)
		ctx := g.m.ctx
		g.mu.Lock()
		if g.closed || g.rep != nil && !g.idleLocked(ctx, false) {
			g.mu.Unlock()
			return
		}
		if g.rep != nil {
			// closeLocked checks the heads, and has a repair run if due.
			g.closeLocked()
			g.mu.Unlock()
			return
		}
		heads, _, _ := g.storedHeads(ctx)
		_, repair := g.frontierCheck(ctx, heads)
		g.lastDigest.Store(nil)
		g.mu.Unlock()
		if repair {
			g.wakeDirty()
		}
	}()
}
