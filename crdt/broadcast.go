package crdt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	crdt "github.com/ipfs/go-ds-crdt"
	"github.com/ipfs/go-ds-crdt/pb"
	"google.golang.org/protobuf/proto"
)

// headsBuffer is the number of head announcements a group holds for its
// replica before the link that delivers them waits (see deliver).
const headsBuffer = 256

// wireVersion starts every message this package sends on a link.
const wireVersion = 1

// maxInlinedHeads bounds the memory of which heads were already sent with
// their blocks; the set starts over when full (a head inlined twice costs
// bytes, never correctness).
const maxInlinedHeads = 4096

// broadcaster is the go-ds-crdt Broadcaster of one group. Broadcast hands
// the group's fresh heads, and the first time a head is announced its
// block, to the links of the members connected now (links.go): members
// apply a fresh delta without fetching it. Heads received from members
// (on links, pushes and anti-entropy) come back through deliver.
//
// Message body: one byte wireVersion, a frame with the heads as
// go-ds-crdt encodes them, then zero or more pairs of frames (CID, block).
// Frames are uvarint-length-prefixed.
type broadcaster struct {
	g    *Group
	done chan struct{}
	once sync.Once
	// ready holds a token while queue may hold announcements; space one
	// when a slot was freed (both of capacity 1).
	ready, space chan struct{}

	mu sync.Mutex
	// queue holds the announcements for the replica, at most headsBuffer;
	// it grows as they come (a channel of headsBuffer made every wake of
	// a group allocate 6 KiB).
	queue [][]byte
	// inlined is made at the first announcement: most wakes of a group
	// (a member's announcement to merge) announce nothing.
	inlined map[cid.Cid]struct{}
}

func newBroadcaster(g *Group) *broadcaster {
	return &broadcaster{g: g, done: make(chan struct{}), ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// signal puts a token in ch unless it holds one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push queues data unless the queue is full.
func (b *broadcaster) push(data []byte) bool {
	b.mu.Lock()
	if len(b.queue) >= headsBuffer {
		b.mu.Unlock()
		return false
	}
	b.queue = append(b.queue, data)
	b.mu.Unlock()
	signal(b.ready)
	return true
}

// pending counts the announcements queued for the replica.
func (b *broadcaster) pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// deliver queues heads for the replica. It waits up to wait when the
// queue is full (a link keeps the order of what one member sent), then
// drops them: the member's next push or anti-entropy round repeats them.
func (b *broadcaster) deliver(ctx context.Context, data []byte, wait time.Duration) bool {
	if b.push(data) {
		return true
	}
	if wait <= 0 {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-b.space:
		case <-b.done:
			return false
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
		if b.push(data) {
			// Another waiter may take the next slot.
			signal(b.space)
			return true
		}
	}
}

// Broadcast sends heads to the group's connected members over their
// links, with the blocks of the heads not announced before, within
// MaxInlineBytes. It returns once the message is queued on every link.
func (b *broadcaster) Broadcast(ctx context.Context, data []byte) error {
	var hs pb.CRDTBroadcast
	if err := proto.Unmarshal(data, &hs); err != nil {
		return fmt.Errorf("crdt: decode heads to broadcast: %w", err)
	}
	var inline []blocks.Block
	budget := b.g.m.cfg.MaxInlineBytes
	kind := linkRepeat
	for _, h := range hs.GetHeads() {
		c, err := cid.Cast(h.GetCid())
		if err != nil || !b.firstTime(c) {
			continue
		}
		kind = linkFresh
		blk, err := b.g.blocks().Get(ctx, c)
		if err != nil || len(blk.RawData()) > budget {
			continue
		}
		budget -= len(blk.RawData())
		inline = append(inline, blk)
	}
	msg := encodeMessage(data, inline)
	m := b.g.m
	for _, p := range b.g.connectedMembers() {
		if err := m.links.send(ctx, p, b.g, msg, kind); err != nil {
			return fmt.Errorf("crdt: announce to %s: %w", m.siteOf(p), err)
		}
	}
	m.metrics.broadcasts.Inc()
	m.metrics.inlineBlocksSent.Add(float64(len(inline)))
	return nil
}

// firstTime reports whether head c is announced for the first time, and
// remembers it.
func (b *broadcaster) firstTime(c cid.Cid) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.inlined[c]; ok {
		return false
	}
	if b.inlined == nil {
		b.inlined = map[cid.Cid]struct{}{}
	}
	if len(b.inlined) >= maxInlinedHeads {
		clear(b.inlined)
	}
	b.inlined[c] = struct{}{}
	return true
}

// Next returns the next announcement, or crdt.ErrNoMoreBroadcast once
// closed.
func (b *broadcaster) Next(ctx context.Context) ([]byte, error) {
	for {
		b.mu.Lock()
		if len(b.queue) > 0 {
			data := b.queue[0]
			b.queue[0] = nil
			if b.queue = b.queue[1:]; len(b.queue) == 0 {
				b.queue = nil // its array goes with the burst
			}
			b.mu.Unlock()
			signal(b.space)
			return data, nil
		}
		b.mu.Unlock()
		select {
		case <-b.ready:
		case <-b.done:
			return nil, crdt.ErrNoMoreBroadcast
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (b *broadcaster) close() {
	b.once.Do(func() { close(b.done) })
}

func encodeMessage(heads []byte, inline []blocks.Block) []byte {
	var buf bytes.Buffer
	buf.WriteByte(wireVersion)
	_ = writeFrame(&buf, heads)
	for _, blk := range inline {
		_ = writeFrame(&buf, blk.Cid().Bytes())
		_ = writeFrame(&buf, blk.RawData())
	}
	return buf.Bytes()
}

// errBadMessage is wrapped by decodeMessage's errors.
var errBadMessage = errors.New("bad group message")

// decodeMessage splits a message into its heads and its blocks, each
// block checked against its CID. It reads the frames in place: the heads
// and blocks returned share data's memory (a reader over it allocated a
// 4 KiB buffer per message, and a copy of every frame).
func decodeMessage(data []byte) ([]byte, []blocks.Block, error) {
	if len(data) == 0 || data[0] != wireVersion {
		return nil, nil, fmt.Errorf("%w: unknown version", errBadMessage)
	}
	rest := data[1:]
	heads, rest, err := cutFrame(rest, maxFrame)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: heads: %v", errBadMessage, err)
	}
	var blks []blocks.Block
	for len(rest) > 0 {
		var cb, raw []byte
		if cb, rest, err = cutFrame(rest, maxFrame); err != nil {
			return nil, nil, fmt.Errorf("%w: cid: %v", errBadMessage, err)
		}
		c, err := cid.Cast(cb)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: cid: %v", errBadMessage, err)
		}
		if raw, rest, err = cutFrame(rest, maxBlock); err != nil {
			return nil, nil, fmt.Errorf("%w: block: %v", errBadMessage, err)
		}
		blk, err := verifiedBlock(c, raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", errBadMessage, err)
		}
		blks = append(blks, blk)
	}
	return heads, blks, nil
}

// cutFrame splits the first frame (its uvarint length, then as many
// bytes) off data, within limit bytes: the frame and what follows it.
func cutFrame(data []byte, limit int) (frame, rest []byte, err error) {
	n, k := binary.Uvarint(data)
	switch {
	case k == 0:
		return nil, nil, io.ErrUnexpectedEOF
	case k < 0:
		return nil, nil, errors.New("frame length overflows")
	case n > uint64(limit):
		return nil, nil, fmt.Errorf("frame of %d bytes is over the limit of %d", n, limit)
	case n > uint64(len(data)-k):
		return nil, nil, io.ErrUnexpectedEOF
	}
	end := k + int(n)
	return data[k:end:end], data[end:], nil
}
