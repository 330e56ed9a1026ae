package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// Design note — RTTs between other sites come from network coordinates.
//
// A site measures its own RTTs (the probes' EWMA), and used to publish
// them all in its record: N RTTs per record, N records, every site
// receiving every record, republished whenever a site came or went. At a
// hundred sites that flood alone saturated the machine. The planner still
// needs RTTs between two other sites (`around(rome, 10ms)` planned at
// paris), so each site now keeps a Vivaldi network coordinate, as Serf
// and Consul do (github.com/hashicorp/serf/coordinate): every answered
// probe carries the peer's coordinate (ProbeProtocol) and moves this
// site's own by the RTT it measured. A record carries the coordinate, a
// constant size, and the RTT between two other sites is the distance
// between their coordinates. The RTTs that involve this site stay
// measured, and a site not probed yet is estimated from its coordinate.
// Records from earlier versions, with RTTs and no coordinate, are still
// read.

// ProbeProtocol is the stream protocol of a probe: for each byte the
// prober sends, the peer answers a frame, a two-byte length then its
// current coordinate in JSON for the first, nothing for the next ones. A
// probe makes two exchanges on one stream and keeps the smaller RTT (the
// first also pays for protocol negotiation). Sites of earlier versions do
// not speak it: the probe then negotiates libp2p's ping and gets no
// coordinate.
const ProbeProtocol = "/cheops/probe/1.0.0"

// coordSettle is how many RTT samples a site's coordinate takes before
// the site publishes it: a fresh coordinate sits at the origin and would
// make every other site look near.
const coordSettle = 8

// maxCoordFrame bounds a coordinate's encoding on the wire.
const maxCoordFrame = 4 << 10

// coordConfig is the Vivaldi configuration every site uses: coordinates
// of two sites are comparable only if their dimensions agree.
func coordConfig() *coordinate.Config { return coordinate.DefaultConfig() }

// validCoord reports whether a coordinate received from a peer can be
// used: the dimensions of this site's, finite, and within ten seconds of
// the origin (no RTT between sites is longer).
func validCoord(c *coordinate.Coordinate, dims int) bool {
	if c == nil || len(c.Vec) != dims || !c.IsValid() || c.Height < 0 || c.Error < 0 {
		return false
	}
	const limit = 10.0 // seconds
	for _, x := range c.Vec {
		if math.Abs(x) > limit {
			return false
		}
	}
	return c.Height <= limit && math.Abs(c.Adjustment) <= limit
}

// coordMoved is how far a site's coordinate moved between two
// publications: the distance between the vectors plus the changes of
// height and adjustment (DistanceTo would add both heights, as between
// two sites).
func coordMoved(a, b *coordinate.Coordinate) time.Duration {
	if a == nil || b == nil || len(a.Vec) != len(b.Vec) {
		return time.Duration(math.MaxInt64)
	}
	sum := 0.0
	for i := range a.Vec {
		d := a.Vec[i] - b.Vec[i]
		sum += d * d
	}
	s := math.Sqrt(sum) + math.Abs(a.Height-b.Height) + math.Abs(a.Adjustment-b.Adjustment)
	return time.Duration(s * float64(time.Second))
}

// handleProbe answers a probe: a frame for every byte received, the
// first with this site's coordinate, until the prober closes the stream.
func (n *Node) handleProbe(s network.Stream) {
	defer s.Close()
	var b [1]byte
	for first := true; ; first = false {
		_ = s.SetReadDeadline(time.Now().Add(n.cfg.ProbeTimeout))
		if _, err := io.ReadFull(s, b[:]); err != nil {
			return
		}
		var data []byte
		if first {
			var err error
			if data, err = json.Marshal(n.coord.GetCoordinate()); err != nil || len(data) > maxCoordFrame {
				_ = s.Reset()
				return
			}
		}
		frame := binary.BigEndian.AppendUint16(nil, uint16(len(data)))
		_ = s.SetWriteDeadline(time.Now().Add(n.cfg.ProbeTimeout))
		if _, err := s.Write(append(frame, data...)); err != nil {
			_ = s.Reset()
			return
		}
	}
}

// exchange makes the round trips of one probe on a connection that is
// open: two on ProbeProtocol, or on libp2p's ping for a site that does not
// speak it. It returns the smaller RTT and the peer's coordinate (nil from
// ping); ok if at least one exchange was answered.
func (n *Node) exchange(ctx context.Context, p peer.ID) (rtt time.Duration, c *coordinate.Coordinate, ok bool) {
	s, err := n.host.NewStream(network.WithNoDial(ctx, "probe"), p, ProbeProtocol, ping.ID)
	if err != nil {
		n.log.Debug("probe: open stream", "peer", p, "err", err)
		return 0, nil, false
	}
	if deadline, has := ctx.Deadline(); has {
		_ = s.SetDeadline(deadline)
	}
	r := bufio.NewReader(s)
	for range 2 {
		start := time.Now()
		var got *coordinate.Coordinate
		if s.Protocol() == ProbeProtocol {
			got, err = askCoord(s, r)
		} else {
			err = pingOnce(s, r)
		}
		sample := time.Since(start)
		if err != nil {
			n.log.Debug("probe: exchange", "peer", p, "protocol", s.Protocol(), "err", err)
			_ = s.Reset()
			return rtt, c, ok
		}
		if !ok || sample < rtt {
			rtt = sample
		}
		if got != nil {
			c = got
		}
		ok = true
	}
	_ = s.Close()
	return rtt, c, ok
}

// askCoord sends one request of ProbeProtocol and reads the coordinate
// that answers it (nil for an empty frame).
func askCoord(s network.Stream, r *bufio.Reader) (*coordinate.Coordinate, error) {
	if _, err := s.Write([]byte{1}); err != nil {
		return nil, err
	}
	var size [2]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	k := binary.BigEndian.Uint16(size[:])
	if k > maxCoordFrame {
		return nil, fmt.Errorf("coordinate of %d bytes", k)
	}
	if k == 0 {
		return nil, nil
	}
	data := make([]byte, k)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, err
	}
	var c coordinate.Coordinate
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("coordinate: %w", err)
	}
	return &c, nil
}

// pingOnce is one round trip of libp2p's ping protocol: 32 random bytes
// echoed back.
func pingOnce(s network.Stream, r *bufio.Reader) error {
	var out, in [ping.PingSize]byte
	if _, err := rand.Read(out[:]); err != nil {
		return err
	}
	if _, err := s.Write(out[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(r, in[:]); err != nil {
		return err
	}
	if !bytes.Equal(in[:], out[:]) {
		return fmt.Errorf("ping answered with other bytes")
	}
	return nil
}
