package crdt

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
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
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) {
		c.DigestInterval = 100 * time.Millisecond
		c.IdleAfter = 200 * time.Millisecond
	}
	n.startAll("a", "b")
	a := n.sites["a"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/k0", []byte("v0")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has k0", func() error { return hasValue(n.sites["b"], ab, "/k0", "v0") })

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
	top, err := g.blocks.Get(ctx, heads[0])
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
