package crdt

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	crdt "github.com/ipfs/go-ds-crdt"
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

// The broadcaster's queue hands announcements over in order, holds
// headsBuffer of them, makes a full deliver wait for a slot (and give up
// after its wait), and ends with ErrNoMoreBroadcast once closed and empty.
func TestBroadcasterQueue(t *testing.T) {
	b := newBroadcaster(nil)
	ctx := context.Background()
	for i := range headsBuffer {
		if !b.deliver(ctx, []byte{byte(i)}, 0) {
			t.Fatalf("announcement %d refused below the bound", i)
		}
	}
	if b.pending() != headsBuffer {
		t.Fatalf("%d pending, want %d", b.pending(), headsBuffer)
	}
	if b.deliver(ctx, []byte("late"), 0) || b.deliver(ctx, []byte("late"), time.Millisecond) {
		t.Fatal("a full queue took one more")
	}
	// Two deliveries wait for slots; two announcements taken let both in.
	var wg sync.WaitGroup
	var in atomic.Int32
	for _, last := range []string{"x", "y"} {
		wg.Go(func() {
			if b.deliver(ctx, []byte(last), time.Minute) {
				in.Add(1)
			}
		})
	}
	for i := range 2 {
		data, err := b.Next(ctx)
		if err != nil || data[0] != byte(i) {
			t.Fatalf("Next: %v %v, want announcement %d", data, err, i)
		}
	}
	wg.Wait()
	if in.Load() != 2 {
		t.Fatalf("%d of the 2 waiting deliveries got in", in.Load())
	}
	for i := 2; i < headsBuffer; i++ {
		if data, err := b.Next(ctx); err != nil || data[0] != byte(i) {
			t.Fatalf("Next: %v %v, want announcement %d", data, err, i)
		}
	}
	got := map[string]bool{}
	for range 2 {
		data, err := b.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got[string(data)] = true
	}
	if !got["x"] || !got["y"] || b.pending() != 0 {
		t.Fatalf("the waiting deliveries gave %v, %d left", got, b.pending())
	}
	b.close()
	if _, err := b.Next(ctx); !errors.Is(err, crdt.ErrNoMoreBroadcast) {
		t.Fatalf("Next after close: %v", err)
	}
}
