package crdt

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore/namespace"
)

// A member holds, besides the writer's one head X, a head Y below it, and
// X's delta never merged: the state one group of 100 sites × 100,000
// writes ended in at one member (heads [Y, X] against the others' [X],
// fewer nodes merged there, asleep, clean; 2 entries missing for good).
// Every round found the heads different and pushed them both ways, which
// changed nothing: X is a head there and taken for merged (a push does
// not wake the group), no head is orphaned, and the merged-count repair
// looks only at equal heads. The test plants that state in the member's
// store while it is stopped, X marked merged or not (as there: 1 node
// merged against 2, the sleeping group's cached heads vouching for X);
// the member must end with the writer's write and heads. Without the
// repair (held.go) marked=true fails; marked=false converges either way
// here (the first push comes before the sleeping group's heads are
// cached, so X is read as not merged and walked) and is kept as a check
// that the repair leaves that path working.
func TestHeldHeadsWithMissingDeltaAreWalkedAgain(t *testing.T) {
	for _, marked := range []bool{true, false} {
		t.Run(fmt.Sprintf("marked=%v", marked), func(t *testing.T) { testHeldHeads(t, marked) })
	}
}

func testHeldHeads(t *testing.T, marked bool) {
	n := pairWithAFirstWrite(t)
	a := n.sites["a"]
	ctx := context.Background()
	ab := []string{"a", "b"}

	// b stops; a writes X (k1) above Y (k0's node).
	n.stop("b", true)
	if err := a.m.Put(ctx, ab, "/k1", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	g := a.m.group("a,b")
	heads := g.knownHeads(ctx)
	if len(heads) != 1 {
		t.Fatalf("a's heads: %v", heads)
	}
	x := heads[0]
	// b's store: X's block stored, X recorded as a head (at height 2)
	// beside Y, marked merged if marked; its delta not merged.
	store, err := OpenStore(filepath.Join(n.dirs["b"], "store"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := g.blocks.Get(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	bs := blockstore.NewBlockstore(namespace.Wrap(store, groupPrefix(g.name).ChildString("blocks")), blockstore.NoPrefix())
	if err := bs.Put(ctx, top); err != nil {
		t.Fatal(err)
	}
	if marked {
		if err := store.Put(ctx, g.processedKey(x), nil); err != nil {
			t.Fatal(err)
		}
	}
	height := binary.AppendUvarint(nil, 2)
	if err := store.Put(ctx, g.crdtPrefix().ChildString(headsNamespace).Child(dshelp.MultihashToDsKey(x.Hash())), height); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	n.start("b")
	b := n.sites["b"]
	if got := b.m.group("a,b").knownHeads(ctx); len(got) != 2 || !slices.ContainsFunc(got, x.Equals) {
		t.Fatalf("b's planted heads: %v, want two with %s", got, x)
	}
	eventually(t, 15*time.Second, "b has k1 and a's heads", func() error {
		if err := hasValue(b, ab, "/k1", "v1"); err != nil {
			return err
		}
		if got := b.m.group("a,b").knownHeads(ctx); !slices.Equal(got, []cid.Cid{x}) {
			return fmt.Errorf("b's heads %v, a's [%s]", got, x)
		}
		return nil
	})
}

// TestHeldDue: a rewalk is due once pushes showing heads held here have
// come for longer than the interval, each within three intervals of the
// previous one, and not again within orphanRewalkEvery.
func TestHeldDue(t *testing.T) {
	const every = 100 * time.Millisecond
	var w orphanWatch
	t0 := time.Unix(1_000_000, 0)
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, false},                     // first seen
		{every / 2, false},             // within the interval
		{5 * every, false},             // a gap of more than 3 intervals: seen anew
		{6 * every, true},              // an interval later: due
		{7 * every, false},             // watched anew
		{9 * every, false},             // an interval on, but a rewalk ran within orphanRewalkEvery
		{time.Minute, false},           // a gap: seen anew
		{time.Minute + 2*every, false}, // still within orphanRewalkEvery of the rewalk at 6 intervals
		{time.Minute + 5*every, false}, // likewise
		{time.Minute + 7*every, true},
	}
	for i, s := range steps {
		if got := w.heldDue(t0.Add(s.at), every); got != s.want {
			t.Fatalf("step %d (at %v): due %v, want %v", i, s.at, got, s.want)
		}
	}
}
