package crdt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	crdt "github.com/ipfs/go-ds-crdt"
	"github.com/ipfs/go-ds-crdt/pb"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"google.golang.org/protobuf/proto"
)

// broadcastBuffer is the number of head announcements a group buffers
// before pubsub drops them: go-ds-crdt's stock broadcaster fixes it at 32,
// which overflows under bursts.
const broadcastBuffer = 4096

// wireVersion starts every message this package publishes.
const wireVersion = 1

// maxInlinedHeads bounds the memory of which heads were already sent with
// their blocks; the set starts over when full (a head inlined twice costs
// bytes, never correctness).
const maxInlinedHeads = 4096

// broadcaster is the go-ds-crdt Broadcaster of one group, over the
// group's pubsub topic. A message carries go-ds-crdt's heads and, the
// first time a head is announced, the head's block: members apply a fresh
// delta without fetching it. It also takes heads pushed directly by a
// member (inject).
//
// Message: one byte wireVersion, a frame with the heads as go-ds-crdt
// encodes them, then zero or more pairs of frames (CID, block). Frames are
// uvarint-length-prefixed.
type broadcaster struct {
	g     *Group
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	in    chan []byte
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu      sync.Mutex
	inlined map[cid.Cid]struct{}
}

func newBroadcaster(g *Group, topic *pubsub.Topic) (*broadcaster, error) {
	sub, err := topic.Subscribe(pubsub.WithBufferSize(broadcastBuffer))
	if err != nil {
		return nil, err
	}
	b := &broadcaster{g: g, topic: topic, sub: sub, in: make(chan []byte, broadcastBuffer),
		done: make(chan struct{}), inlined: map[cid.Cid]struct{}{}}
	b.wg.Add(1)
	go b.pump()
	return b, nil
}

// pump reads the topic: it stores the blocks a message carries (each
// checked against its CID) and passes the heads on to go-ds-crdt.
func (b *broadcaster) pump() {
	defer b.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	g, m := b.g, b.g.m
	for {
		msg, err := b.sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == m.cfg.Host.ID() {
			continue
		}
		heads, blks, err := decodeMessage(msg.Data)
		if err != nil {
			m.metrics.malformed.Inc()
			m.log.Warn("dropped a malformed group message", "group", g.name, "from", msg.ReceivedFrom, "err", err)
			continue
		}
		from := m.siteOf(msg.GetFrom())
		m.metrics.broadcastBytesReceived.WithLabelValues(from).Add(float64(len(msg.Data)))
		if len(blks) > 0 {
			if err := g.blocks.PutMany(ctx, blks); err != nil {
				m.log.Warn("store inlined blocks", "group", g.name, "err", err)
			} else {
				m.metrics.inlineBlocksReceived.Add(float64(len(blks)))
			}
		}
		m.metrics.lastSync.WithLabelValues(g.name, from).SetToCurrentTime()
		select {
		case b.in <- heads:
		case <-b.done:
			return
		}
	}
}

// inject queues heads received outside pubsub; it drops them when the
// queue is full (the next push or rebroadcast repeats them).
func (b *broadcaster) inject(data []byte) {
	select {
	case b.in <- data:
	default:
	}
}

// Broadcast publishes heads on the group's topic, with the blocks of the
// heads not announced before, within MaxInlineBytes.
func (b *broadcaster) Broadcast(ctx context.Context, data []byte) error {
	var hs pb.CRDTBroadcast
	if err := proto.Unmarshal(data, &hs); err != nil {
		return fmt.Errorf("crdt: decode heads to broadcast: %w", err)
	}
	var inline []blocks.Block
	budget := b.g.m.cfg.MaxInlineBytes
	for _, h := range hs.GetHeads() {
		c, err := cid.Cast(h.GetCid())
		if err != nil || !b.firstTime(c) {
			continue
		}
		blk, err := b.g.blocks.Get(ctx, c)
		if err != nil || len(blk.RawData()) > budget {
			continue
		}
		budget -= len(blk.RawData())
		inline = append(inline, blk)
	}
	msg := encodeMessage(data, inline)
	if err := b.topic.Publish(ctx, msg); err != nil {
		return fmt.Errorf("crdt: publish: %w", err)
	}
	m := b.g.m
	m.metrics.broadcasts.Inc()
	m.metrics.broadcastBytesSent.Add(float64(len(msg)))
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
	if len(b.inlined) >= maxInlinedHeads {
		clear(b.inlined)
	}
	b.inlined[c] = struct{}{}
	return true
}

// Next returns the next announcement, or crdt.ErrNoMoreBroadcast once
// closed.
func (b *broadcaster) Next(ctx context.Context) ([]byte, error) {
	select {
	case data := <-b.in:
		return data, nil
	case <-b.done:
		return nil, crdt.ErrNoMoreBroadcast
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *broadcaster) close() {
	b.once.Do(func() {
		close(b.done)
		b.sub.Cancel()
		b.wg.Wait()
	})
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
// block checked against its CID.
func decodeMessage(data []byte) ([]byte, []blocks.Block, error) {
	if len(data) == 0 || data[0] != wireVersion {
		return nil, nil, fmt.Errorf("%w: unknown version", errBadMessage)
	}
	r := bufio.NewReader(bytes.NewReader(data[1:]))
	heads, err := readFrame(r, maxFrame)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: heads: %v", errBadMessage, err)
	}
	var blks []blocks.Block
	for {
		cb, err := readFrame(r, maxFrame)
		if errors.Is(err, io.EOF) {
			return heads, blks, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: cid: %v", errBadMessage, err)
		}
		c, err := cid.Cast(cb)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: cid: %v", errBadMessage, err)
		}
		raw, err := readFrame(r, maxBlock)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: block: %v", errBadMessage, err)
		}
		blk, err := verifiedBlock(c, raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", errBadMessage, err)
		}
		blks = append(blks, blk)
	}
}
