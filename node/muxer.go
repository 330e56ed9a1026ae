package node

import (
	"time"

	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
)

// keepaliveAnswerTimeout is how long a TCP connection's muxer waits for
// the answer to its keepalive ping (and for a write to the connection)
// before it closes the connection.
//
// yamux pings a connection that has received nothing for 30 s and, by
// default, closes it when the answer takes more than 10 s. That detector
// knows nothing of the host's own load: a starved agent answers late,
// and its live connections were closed with whatever was written on them
// and not yet read. At 100 in-process sites on two cores, where the Go
// scheduler fell up to 15–30 s behind during a burst of writes, 450 to
// 3,684 connections closed per run; each cost a handshake, the catch-up
// of every group the pair shares and, for the writes made meanwhile, a
// wait for the redial (docs/scaling.md, "Connections cut by yamux's
// keepalive"). Membership's probes are the detector that allows for a
// starved host (awareness.go); yamux's only has to find dead
// connections, and with 30 s it still does within a minute, as QUIC's
// idle timeout (30 s) does for QUIC connections.
const keepaliveAnswerTimeout = 30 * time.Second

// measureRTTEvery is how often yamux measures a connection's RTT, by a
// ping of its own (and once when the connection opens). It uses the
// figure only to decide when to grow a stream's receive window (a window
// consumed within four RTTs doubles); libp2p reads it nowhere else, and
// membership measures RTTs with its own probes. yamux's default, every
// 30 s on every connection whatever its traffic, comes to ~370 pings a
// second among 100 in-process sites (11,200 connection ends; by the
// interval, not counted); every 5 minutes keeps the window's figure
// current for a path whose RTT drifts.
const measureRTTEvery = 5 * time.Minute

// muxer returns libp2p's yamux transport with keepaliveAnswerTimeout and
// measureRTTEvery.
func muxer() *yamux.Transport {
	cfg := *yamux.DefaultTransport.Config()
	cfg.ConnectionWriteTimeout = keepaliveAnswerTimeout
	cfg.MeasureRTTInterval = measureRTTEvery
	t := yamux.Transport(cfg)
	return &t
}
