package crdt

import (
	"slices"
	"testing"

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
