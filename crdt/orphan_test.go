package crdt

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore/namespace"
)

// A member holds the top of a branch marked merged without it being one
// of its heads, and the blocks below it not merged: the state go-ds-crdt
// leaves when a walk marked the branch's top and then lost the rest (a
// fetch that failed; a repair then walks only from the heads and marks
// the replica clean; the test plants that state in the member's store
// while it is stopped). Every later push of the top was taken for merged:
// the member's heads stayed behind the writer's for good ("match false"
// every round, 96 entries missing at 100 sites × 100,000 writes). The
// member must walk the branch again and end with the writer's writes.
func TestOrphanedBranchTopIsWalkedAgain(t *testing.T) {
	n := pairWithAFirstWrite(t)
	a := n.sites["a"]
	ctx := context.Background()
	ab := []string{"a", "b"}

	// b stops; a writes two more nodes (k1, then k2 above it).
	n.stop("b", true)
	for _, k := range []string{"/k1", "/k2"} {
		if err := a.m.Put(ctx, ab, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	g := a.m.group("a,b")
	heads := g.knownHeads(ctx)
	if len(heads) != 1 {
		t.Fatalf("a's heads: %v", heads)
	}
	// b's store: the top (k2's node) stored and marked merged, nothing
	// else of the branch.
	store, err := OpenStore(filepath.Join(n.dirs["b"], "store"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := g.blocks().Get(ctx, heads[0])
	if err != nil {
		t.Fatal(err)
	}
	bs := blockstore.NewBlockstore(namespace.Wrap(store, groupPrefix(g.name).ChildString("blocks")), blockstore.NoPrefix())
	if err := bs.Put(ctx, top); err != nil {
		t.Fatal(err)
	}
	mark := g.processedKey(heads[0])
	if err := store.Put(ctx, mark, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	n.start("b")
	eventually(t, 15*time.Second, "b has k1 and k2", func() error {
		if err := hasValue(n.sites["b"], ab, "/k1", "/k1"); err != nil {
			return err
		}
		return hasValue(n.sites["b"], ab, "/k2", "/k2")
	})
}

// TestDeliverReadsEachMarkOnce: an announcement of a head merged below
// b's heads (a member behind) leaves b's sleeping group asleep, and the
// head's merged mark is read once (orphaned and the "already merged"
// check read it one after the other: ~1 % of the CPU of 100 sites).
func TestDeliverReadsEachMarkOnce(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) {
		c.IdleAfter = 200 * time.Millisecond
		c.DigestInterval = time.Hour
		c.RebroadcastInterval = time.Hour
	}
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	first := a.m.group("a,b").knownHeads(ctx)
	if len(first) != 1 {
		t.Fatalf("a's heads after one write: %v", first)
	}
	if err := a.m.Put(ctx, ab, "/k", []byte("2")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has the second write", func() error { return hasValue(b, ab, "/k", "2") })
	// (A read wakes the group: no more until it sleeps.)
	eventually(t, 10*time.Second, "b's group sleeps", func() error {
		if !asleep(b, "a,b") {
			return fmt.Errorf("b's group is awake")
		}
		return nil
	})
	g := b.m.group("a,b")
	g.digest(ctx) // cached as it sleeps: its own heads need no read
	old, err := encodeHeads(first)
	if err != nil {
		t.Fatal(err)
	}
	before := b.disk.has.Load()
	if ok, err := g.deliver(ctx, old, 0, false, wakeAnnouncement); err != nil || !ok {
		t.Fatalf("deliver: %v, %v", ok, err)
	}
	if got := b.disk.has.Load() - before; got != 1 {
		t.Errorf("%d Has calls to deliver one merged head, want 1", got)
	}
	if !asleep(b, "a,b") {
		t.Error("a merged head woke b's sleeping group")
	}
}

// pairWithAFirstWrite starts sites a and b (quick rounds, groups asleep
// after 200 ms) and returns once b holds a's first write, /k0, in their
// group: the start of the repair tests, which then stop b and plant a
// state in its store.
func pairWithAFirstWrite(t *testing.T) *testNet {
	t.Helper()
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) {
		c.DigestInterval = 100 * time.Millisecond
		c.IdleAfter = 200 * time.Millisecond
	}
	n.startAll("a", "b")
	ab := []string{"a", "b"}
	if err := n.sites["a"].m.Put(context.Background(), ab, "/k0", []byte("v0")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has k0", func() error { return hasValue(n.sites["b"], ab, "/k0", "v0") })
	return n
}

// A group that has merged no node here has no mark to read: the
// announcement of a new group's first delta is checked without a read of
// the store, and found neither orphaned nor merged; once the group has
// merged a node, the marks are read again.
func TestNoMarkReadInAGroupThatMergedNothing(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	b := n.sites["b"]
	ctx := context.Background()
	sites := []string{"a", "b"}
	g, err := b.m.join(ctx, sites)
	if err != nil {
		t.Fatal(err)
	}
	head := blocks.NewBlock([]byte("a delta of a")).Cid()
	before := b.disk.has.Load()
	if orphan, marked := g.orphaned(ctx, []cid.Cid{head}); orphan || marked {
		t.Fatalf("a head announced to a group that merged nothing: orphan %v, marked %v", orphan, marked)
	}
	if reads := b.disk.has.Load() - before; reads != 0 {
		t.Fatalf("%d reads of the store for a group that merged nothing", reads)
	}
	if err := b.m.Put(ctx, sites, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before = b.disk.has.Load()
	if orphan, marked := g.orphaned(ctx, []cid.Cid{head}); orphan || marked {
		t.Fatalf("after a write: orphan %v, marked %v", orphan, marked)
	}
	if b.disk.has.Load() == before {
		t.Fatal("the mark of a head was not read once the group had merged a node")
	}
}
