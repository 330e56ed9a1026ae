package crdt

import (
	"bytes"
	"errors"
	"testing"

	blocks "github.com/ipfs/go-block-format"
)

// A group message decodes to the heads and blocks it was encoded from;
// every truncation of it, and a block whose bytes do not match its CID,
// is refused as a bad message.
func TestDecodeMessage(t *testing.T) {
	blks := []blocks.Block{blocks.NewBlock([]byte("first block")), blocks.NewBlock(bytes.Repeat([]byte("b"), 300))}
	msg := encodeMessage([]byte("heads"), blks)
	heads, got, err := decodeMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	if string(heads) != "heads" || len(got) != 2 {
		t.Fatalf("decoded %q and %d blocks", heads, len(got))
	}
	for i, b := range got {
		if !b.Cid().Equals(blks[i].Cid()) || !bytes.Equal(b.RawData(), blks[i].RawData()) {
			t.Fatalf("block %d: %s, want %s", i, b.Cid(), blks[i].Cid())
		}
	}
	// A frame's bytes cannot be extended into the next one's.
	if cap(heads) != len(heads) {
		t.Fatalf("heads of capacity %d for %d bytes", cap(heads), len(heads))
	}
	for n := range len(msg) {
		if _, _, err := decodeMessage(msg[:n]); err == nil && n != len(encodeMessage([]byte("heads"), nil)) && n != len(encodeMessage([]byte("heads"), blks[:1])) {
			t.Fatalf("a message cut at %d of %d bytes decoded", n, len(msg))
		} else if err != nil && !errors.Is(err, errBadMessage) {
			t.Fatalf("cut at %d: %v is not a bad message", n, err)
		}
	}
	tampered := bytes.Clone(msg)
	tampered[len(tampered)-1] ^= 1
	if _, _, err := decodeMessage(tampered); !errors.Is(err, errBadMessage) {
		t.Fatalf("a block not matching its CID: %v", err)
	}
}

// BenchmarkDecodeMessage decodes an announcement with one inlined block,
// as a link delivers each.
func BenchmarkDecodeMessage(b *testing.B) {
	msg := encodeMessage(bytes.Repeat([]byte("h"), 40), []blocks.Block{blocks.NewBlock(bytes.Repeat([]byte("d"), 200))})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := decodeMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}
