package bench

import (
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// byteCounter counts every byte a libp2p host receives, exactly
// and at once. libp2p's BandwidthCounter updates its totals from a
// once-a-second sweeper, so a run shorter than a sweep reads zero; the
// benchmarks need the bytes, not the rates.
type byteCounter struct {
	*metrics.BandwidthCounter // rates and per-peer figures for the rest of the interface
	in                        atomic.Int64
}

func newByteCounter() *byteCounter {
	return &byteCounter{BandwidthCounter: metrics.NewBandwidthCounter()}
}

func (c *byteCounter) LogRecvMessage(n int64) {
	c.in.Add(n)
	c.BandwidthCounter.LogRecvMessage(n)
}

func (c *byteCounter) LogSentMessageStream(n int64, p protocol.ID, id peer.ID) {
	c.BandwidthCounter.LogSentMessageStream(n, p, id)
}

func (c *byteCounter) LogRecvMessageStream(n int64, p protocol.ID, id peer.ID) {
	c.BandwidthCounter.LogRecvMessageStream(n, p, id)
}

// received is the number of bytes received so far.
func (c *byteCounter) received() int64 { return c.in.Load() }
