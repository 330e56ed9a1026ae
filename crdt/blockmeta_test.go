package crdt

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	dag "github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/go-ds-crdt/pb"
	"google.golang.org/protobuf/proto"
)

// fullMeta decodes a block the way go-ds-crdt does (the whole dag-pb node
// and the whole delta): the reference parseBlock must agree with. delta
// reports whether the delta decoded (go-ds-crdt merges no other).
func fullMeta(raw []byte) (m blockMeta, ok, delta bool) {
	nd, err := dag.DecodeProtobuf(raw)
	if err != nil {
		return blockMeta{}, false, false
	}
	for _, l := range nd.Links() {
		m.links = append(m.links, l.Cid)
	}
	var d pb.Delta
	if proto.Unmarshal(nd.Data(), &d) == nil {
		m.height, delta = d.GetPriority(), true
	}
	return m, true, delta
}

// testBlock builds a block as go-ds-crdt does: a dag-pb node whose data is
// a delta, linked to parents.
func testBlock(t testing.TB, prio uint64, values int, parents ...*dag.ProtoNode) *dag.ProtoNode {
	t.Helper()
	delta := &pb.Delta{Priority: prio}
	for i := range values {
		delta.Elements = append(delta.Elements, &pb.Element{Key: "/r/k" + string(rune('a'+i)), Value: []byte(`{"body":"some bytes of a value"}`)})
	}
	data, err := proto.Marshal(delta)
	if err != nil {
		t.Fatal(err)
	}
	nd := dag.NodeWithData(data)
	for _, p := range parents {
		if err := nd.AddNodeLink("", p); err != nil {
			t.Fatal(err)
		}
	}
	return nd
}

// parseBlock reads the links and the height go-ds-crdt's own decoding
// reads, from blocks with no parent, one, several, no value and many.
func TestParseBlockAgreesWithFullDecoding(t *testing.T) {
	root := testBlock(t, 1, 3)
	a := testBlock(t, 2, 1, root)
	b := testBlock(t, 2, 0, root)
	merge := testBlock(t, 3, 20, a, b)
	big := testBlock(t, 1<<40, 2, merge, a, b, root)
	for _, nd := range []*dag.ProtoNode{root, a, b, merge, big} {
		raw := nd.RawData()
		want, _, _ := fullMeta(raw)
		got, ok := parseBlock(raw)
		if !ok || got.height != want.height || !slices.Equal(got.links, want.links) {
			t.Fatalf("parseBlock: %v, height %d, links %v; full decoding: height %d, links %v", ok, got.height, got.links, want.height, want.links)
		}
	}
}

// FuzzParseBlock: parseBlock never panics and, on any block that decodes
// fully, reads the links the full decoding reads, and the height when
// the delta decodes (a delta go-ds-crdt cannot decode is never merged:
// its height only orders a walk).
func FuzzParseBlock(f *testing.F) {
	root := testBlock(f, 1, 3)
	f.Add(root.RawData())
	f.Add(testBlock(f, 7, 2, root, testBlock(f, 2, 0)).RawData())
	f.Add([]byte{0x12, 0x03, 0x0a, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, ok := parseBlock(raw)
		want, wok, delta := fullMeta(raw)
		if wok && !ok {
			t.Fatalf("parseBlock failed on a block that decodes fully (links %v)", want.links)
		}
		if !wok {
			return
		}
		if delta && got.height != want.height || !slices.Equal(got.links, want.links) {
			t.Fatalf("parseBlock: height %d, links %v; full decoding: height %d, links %v", got.height, got.links, want.height, want.links)
		}
	})
}

func (mc *metaCache) len() int {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return len(mc.m)
}

// An awake group notes the metas of the blocks written to it (its own
// deltas, the ones members send), each as parseBlock reads the stored
// block; a sleeping group keeps none, and notes none while it serves
// blocks asleep.
func TestGroupMetasWhileAwakeOnly(t *testing.T) {
	n := newNet(t, "a", "b")
	// Long enough that a's group, untouched after its writes, is still
	// awake when b has them on a loaded machine (with 200 ms it could
	// sleep first, and forget its metas, before the check).
	n.tune = func(c *Config) { c.IdleAfter = 2 * time.Second }
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	for i := range 5 {
		if err := a.m.Put(ctx, ab, fmt.Sprintf("/k/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "b has a's writes", func() error { return hasValue(b, ab, "/k/4", "v") })
	// a wrote 5 blocks awake; b joined the group on the first block (its
	// replica, and the notes, start after it) and received the others.
	for s, least := range map[*site]int{a: 5, b: 4} {
		g := s.m.group("a,b")
		if got := g.metas.len(); got < least {
			t.Fatalf("%s noted %d block metas for 5 writes", s.name, got)
		}
		g.metas.mu.Lock()
		noted := maps.Clone(g.metas.m)
		g.metas.mu.Unlock()
		for c, m := range noted {
			blk, err := g.blocks().Get(ctx, c)
			if err != nil {
				t.Fatalf("%s noted %s, which it does not hold: %v", s.name, c, err)
			}
			if want, _ := parseBlock(blk.RawData()); want.height != m.height || !slices.Equal(want.links, m.links) {
				t.Fatalf("%s noted %s as %+v; the block reads %+v", s.name, c, m, want)
			}
		}
	}
	eventually(t, 10*time.Second, "the group asleep at a", func() error {
		if !asleep(a, "a,b") {
			return errors.New("awake")
		}
		return nil
	})
	g := a.m.group("a,b")
	if got := g.metas.len(); got != 0 {
		t.Fatalf("a sleeping group keeps %d block metas", got)
	}
	heads := g.knownHeads(ctx)
	g.knownSample(ctx)
	newServeWalk(ctx, g, &cidSet{set: map[cid.Cid]struct{}{}}).enqueue(heads[0], cid.Undef, false)
	if got := g.metas.len(); got != 0 || !asleep(a, "a,b") {
		t.Fatalf("walks of a sleeping group left %d block metas (asleep: %v)", got, asleep(a, "a,b"))
	}
}
