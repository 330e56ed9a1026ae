package crdt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore/namespace"
)

// A local write while go-ds-crdt merges the first announcement of a
// replica with no heads. go-ds-crdt records that announcement's heads
// as heads before it walks them; a write committed during the walk
// linked them, replaced them, and the walk's end recorded its root as a
// head again: heads [Y, X] with Y below the write X, where the writer's
// members hold [X], for good (seed.go). The walk here waits for a block
// a fetch in progress is bringing (b's own fetch, claimed by the test,
// ends when the test stores the block); the write must end with one
// head, the write's, above everything merged.
func TestWriteDuringFirstMergeLinksMergedHeads(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) {
		c.DigestInterval = time.Hour
		c.RebroadcastInterval = time.Hour
		c.IdleAfter = time.Minute
	}
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab := []string{"a", "b"}

	// a writes W (k1), then Y (k2) above it, while b hears nothing.
	n.partition([]string{"a"}, []string{"b"})
	var chain []cid.Cid
	for _, k := range []string{"/k1", "/k2"} {
		if err := a.m.Put(ctx, ab, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		heads := a.m.group("a,b").knownHeads(ctx)
		if len(heads) != 1 {
			t.Fatalf("a's heads: %v", heads)
		}
		chain = append(chain, heads[0])
	}
	w, y := chain[0], chain[1]
	ga := a.m.group("a,b")
	wBlock, err := ga.blocks().Get(ctx, w)
	if err != nil {
		t.Fatal(err)
	}
	yBlock, err := ga.blocks().Get(ctx, y)
	if err != nil {
		t.Fatal(err)
	}

	// b joins; a fetch of W is in progress (the test's), and Y comes
	// with its block, as from a: b's walk of Y waits for W.
	gb, err := b.m.join(ctx, ab)
	if err != nil {
		t.Fatal(err)
	}
	if _, claimed := gb.arrivals.claim([]cid.Cid{w}); !claimed {
		t.Fatal("a fetch is in progress at b already")
	}
	fetching := true
	defer func() {
		if fetching {
			gb.arrivals.end()
		}
	}()
	peers, err := json.Marshal(ga.peers)
	if err != nil {
		t.Fatal(err)
	}
	data, err := encodeHeads([]cid.Cid{y})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.m.receive(a.id, "a,b", peers, encodeMessage(data, []blocks.Block{yBlock})); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b merged Y and waits for W", func() error {
		if ok, _ := b.m.cfg.Datastore.Has(ctx, gb.processedKey(y)); !ok {
			return fmt.Errorf("Y not merged")
		}
		return nil
	})

	// b writes k3 meanwhile; then W arrives.
	wrote := make(chan error, 1)
	go func() { wrote <- b.m.Put(ctx, ab, "/k3", []byte("/k3")) }()
	select {
	case err := <-wrote:
		// Committed at once (linking Y, not merged to the bottom).
		wrote <- err
	case <-time.After(500 * time.Millisecond):
		// Waiting for the walk of Y.
	}
	if err := gb.blocks().Put(ctx, wBlock); err != nil {
		t.Fatal(err)
	}
	fetching = false
	gb.arrivals.end()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b's walk of Y ends", func() error {
		if r := gb.awake(); r != nil && r.inHand.unfinished() {
			return fmt.Errorf("still merging")
		}
		return nil
	})
	for _, k := range []string{"/k1", "/k2", "/k3"} {
		if err := hasValue(b, ab, k, k); err != nil {
			t.Fatal(err)
		}
	}
	heads := gb.knownHeads(ctx)
	if len(heads) != 1 || slices.Contains(heads, y) {
		t.Fatalf("b's heads after its write: %v (Y is %s): want the write's node alone", heads, y)
	}
}

// A member holds heads [Y, X], Y below X, X marked merged and neither
// delta merged: the state of the group of 100 sites × 100,000 writes
// whose 2 entries never arrived (heads [Y, X] against [X] at the other
// members, one node merged of two, asleep, clean). The test plants it in
// the member's store while it is stopped. Every push of X was taken for
// merged (X is a head there and marked), and the member stayed behind
// for good. The writer's pushes of X must bring the member's heads to
// the writer's and every write merged (frontier.go).
func TestHeadBelowAnotherIsDroppedAndTheGroupMerged(t *testing.T) {
	n := pairWithAFirstWrite(t)
	a := n.sites["a"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	g := a.m.group("a,b")
	n0 := g.knownHeads(ctx)

	// b stops; a writes Y (k1), then X (k2) above it.
	n.stop("b", true)
	var chain []cid.Cid
	for _, k := range []string{"/k1", "/k2"} {
		if err := a.m.Put(ctx, ab, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		heads := g.knownHeads(ctx)
		if len(heads) != 1 {
			t.Fatalf("a's heads: %v", heads)
		}
		chain = append(chain, heads[0])
	}
	y, x := chain[0], chain[1]

	// b's store: Y's and X's blocks, heads [Y, X] instead of k0's node,
	// X marked merged; no delta merged.
	store, err := OpenStore(filepath.Join(n.dirs["b"], "store"))
	if err != nil {
		t.Fatal(err)
	}
	bs := blockstore.NewBlockstore(namespace.Wrap(store, groupPrefix(g.name).ChildString("blocks")), blockstore.NoPrefix())
	headsNs := g.crdtPrefix().ChildString(headsNamespace)
	for i, c := range []cid.Cid{y, x} {
		blk, err := g.blocks().Get(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.Put(ctx, blk); err != nil {
			t.Fatal(err)
		}
		height := binary.AppendUvarint(nil, uint64(i+2))
		if err := store.Put(ctx, headsNs.Child(dshelp.MultihashToDsKey(c.Hash())), height); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Delete(ctx, headsNs.Child(dshelp.MultihashToDsKey(n0[0].Hash()))); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, g.processedKey(x), nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	n.start("b")
	b := n.sites["b"]
	gb := b.m.group("a,b")
	// Watched without waking the group (a's pushes of X do).
	eventually(t, 15*time.Second, "b's heads are a's and every node merged", func() error {
		heads := gb.knownHeads(ctx)
		if !slices.Equal(heads, []cid.Cid{x}) {
			return fmt.Errorf("b's heads %v, a's [%s]", heads, x)
		}
		if n := gb.processedCount(ctx); n != 3 {
			return fmt.Errorf("b merged %d nodes of 3", n)
		}
		return nil
	})
	for _, k := range []string{"/k0", "/k1", "/k2"} {
		want := k
		if k == "/k0" {
			want = "v0"
		}
		if err := hasValue(b, ab, k, want); err != nil {
			t.Fatal(err)
		}
	}
}
