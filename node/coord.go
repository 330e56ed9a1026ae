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

	"cheops/internal/keptstream"
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
// constant size, republished every RecordRefresh intervals, and the RTT
// between two other sites is the distance between their coordinates. The RTTs that involve this site stay
// measured, and a site not probed yet is estimated from its coordinate.
// Records from earlier versions, with RTTs and no coordinate, are still
// read.

// ProbeProtocol is the stream protocol of a probe: for each byte the
// prober sends, the peer answers a frame, a two-byte length then, for the
// first, a probeAnswer in JSON, nothing for the next ones. A probe makes
// one exchange: the stream is opened first (a round trip when the peer's
// protocols are not known yet, none afterwards since libp2p then
// negotiates optimistically), so that the exchange measures one round
// trip. Sites of earlier versions do not speak it: the probe then
// negotiates libp2p's ping and learns nothing more.
const ProbeProtocol = "/cheops/probe/1.0.0"

// ProbeKeptProtocol carries a pair's probes one after the other on a
// stream the prober keeps (internal/keptstream): the peer answers every
// byte with a full frame (its coordinate and its current suspicions), and
// waits for the next probe up to probeKeep before it closes the stream.
// A stream opened and closed for every probe (multistream negotiation,
// the resource manager's scopes, yamux's opening and closing frames, a
// handler goroutine at the peer), about 4 probes a second per site, was
// the largest part of what 100 idle in-process sites spent (0.30 of a
// core in all, BenchmarkScaleForm with CHEOPS_SCALE_IDLE_WINDOW; 0.23
// with kept streams alone). A site that speaks
// only ProbeProtocol or ping gets a stream per probe, as before.
const ProbeKeptProtocol = "/cheops/probe/1.1.0"

// probeKeep is how long the answering side of a kept probe stream waits
// for the next probe: 60 probe intervals. With ProbeFanout healthy peers
// probed per round, a prober comes back to a peer every N/ProbeFanout
// rounds (13 at 100 sites), further apart on a starved site.
func (n *Node) probeKeep() time.Duration { return 60 * n.cfg.ProbeInterval }

// probeReuse is how long after its last probe the prober still uses a
// kept stream: less than probeKeep, so that it does not pick a stream
// the peer is closing (a probe that fails on a kept stream is made again
// on a new one, in case).
func (n *Node) probeReuse() time.Duration { return 45 * n.cfg.ProbeInterval }

// coordSettle is how many RTT samples a site's coordinate takes before
// the site publishes it: a fresh coordinate sits at the origin and would
// make every other site look near.
const coordSettle = 8

// rttWindow is how many recent RTT samples of a peer rttFilter keeps.
const rttWindow = 5

// rttFilter keeps a peer's last rttWindow RTT samples and gives their
// minimum, which is what the site's EWMA and its network coordinate take
// instead of the raw sample. Queueing and scheduling delay only ever add
// to a round trip: on a starved host (the prober, or the peer, not run on
// time) a sample can be many times the path's RTT, and fed to Vivaldi it
// pushes every coordinate apart (a 40 ms pair estimated at 100 ms at load
// average 11 on two cores). The minimum of recent samples is the path's
// RTT as TCP's and BBR's min-RTT filters take it; Serf filters the same
// input with the median of the last three. A lasting rise shows once the
// window has passed it (rttWindow probes of the peer); a fall at once.
type rttFilter struct {
	recent [rttWindow]time.Duration
	next   int
	n      int
}

// add records a sample and returns the filtered RTT.
func (f *rttFilter) add(rtt time.Duration) time.Duration {
	f.recent[f.next] = rtt
	f.next = (f.next + 1) % rttWindow
	f.n = min(f.n+1, rttWindow)
	low := rtt
	for _, r := range f.recent[:f.n] {
		low = min(low, r)
	}
	return low
}

// maxProbeFrame bounds a probe answer's encoding on the wire.
const maxProbeFrame = 4 << 10

// probeReadBuffer sizes the reader of a probe stream, kept with it for
// every peer: an answer is a coordinate and a few site names (~150 B),
// and a longer one is read past the buffer.
const probeReadBuffer = 512

// maxSuspects bounds the suspicions one probe answer carries.
const maxSuspects = 16

// probeAnswer is what a site answers a probe with: its coordinate, and
// the sites it suspects (see suspicionsLocked), piggybacked as SWIM does
// so that a suspicion spreads without a publication to every site.
type probeAnswer struct {
	Coord    *coordinate.Coordinate `json:"coord"`
	Suspects []string               `json:"suspects,omitempty"`
}

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

// handleProbe answers a probe of ProbeProtocol: a frame for every byte
// received, the first with this site's coordinate and suspicions, until
// the prober closes the stream.
func (n *Node) handleProbe(s network.Stream) { n.answerProbes(s, false) }

// handleKeptProbe answers the probes of ProbeKeptProtocol: every frame
// with this site's coordinate and suspicions, the next probe awaited up
// to probeKeep.
func (n *Node) handleKeptProbe(s network.Stream) { n.answerProbes(s, true) }

// answerProbes answers the probes that arrive on s, a frame for each
// byte, until the prober closes it or no probe comes in time; kept says
// every frame carries the answer (ProbeKeptProtocol), not the first only.
func (n *Node) answerProbes(s network.Stream, kept bool) {
	defer s.Close()
	var b [1]byte
	for first := true; ; first = false {
		wait := n.probeTimeout(false)
		if kept && !first {
			wait = n.probeKeep()
		}
		_ = s.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(s, b[:]); err != nil {
			return
		}
		var data []byte
		if first || kept {
			var err error
			n.mu.Lock()
			ans := probeAnswer{Coord: n.coord.GetCoordinate(), Suspects: n.suspicionsLocked()}
			n.mu.Unlock()
			if data, err = json.Marshal(ans); err != nil || len(data) > maxProbeFrame {
				_ = s.Reset()
				return
			}
		}
		frame := binary.BigEndian.AppendUint16(nil, uint16(len(data)))
		_ = s.SetWriteDeadline(time.Now().Add(n.probeTimeout(false)))
		if _, err := s.Write(append(frame, data...)); err != nil {
			_ = s.Reset()
			return
		}
	}
}

// exchange makes the round trip of one probe on a connection that is
// open: on the stream kept from the last probe of p if there is one, or
// on a new one of ProbeKeptProtocol, ProbeProtocol or, for a site that
// speaks neither, libp2p's ping. It returns the RTT and the peer's answer
// (nil from ping), or why it failed.
func (n *Node) exchange(ctx context.Context, p peer.ID) (rtt time.Duration, ans *probeAnswer, err error) {
	if k, ok := n.keptProbes.Take(p, n.probeReuse()); ok {
		rtt, ans, err = n.exchangeOn(ctx, p, k)
		if err == nil || ctx.Err() != nil {
			return rtt, ans, err
		}
		// The peer may have ended the stream (its wait ran out, it
		// restarted) as this probe began: made again on a new stream.
		n.log.Debug("probe: kept stream failed; opening another", "peer", p, "err", err)
	}
	s, err := n.host.NewStream(network.WithNoDial(ctx, "probe"), p, ProbeKeptProtocol, ProbeProtocol, ping.ID)
	if err != nil {
		n.stats.openFails.Add(1)
		n.log.Debug("probe: open stream", "peer", p, "err", err)
		return 0, nil, fmt.Errorf("open a probe stream: %w", err)
	}
	n.stats.probeStreams.Add(1)
	return n.exchangeOn(ctx, p, keptstream.Stream{S: s, R: bufio.NewReaderSize(s, probeReadBuffer)})
}

// exchangeOn makes one probe's round trip on k, and then keeps k for the
// next probe of p when its protocol allows and the probe was answered; it
// is closed otherwise (reset on a failure).
func (n *Node) exchangeOn(ctx context.Context, p peer.ID, k keptstream.Stream) (rtt time.Duration, ans *probeAnswer, err error) {
	s := k.S
	if deadline, has := ctx.Deadline(); has {
		_ = s.SetDeadline(deadline)
	}
	start := time.Now()
	if s.Protocol() == ping.ID {
		err = pingOnce(s, k.R)
	} else {
		ans, err = ask(s, k.R)
	}
	rtt = time.Since(start)
	switch {
	case err != nil:
		n.log.Debug("probe: exchange", "peer", p, "protocol", s.Protocol(), "err", err)
		_ = s.Reset()
		return 0, nil, fmt.Errorf("probe exchange: %w", err)
	case s.Protocol() == ProbeKeptProtocol:
		_ = s.SetDeadline(time.Time{})
		k.Used = time.Now()
		n.keptProbes.Put(p, k)
	default:
		_ = s.Close()
	}
	return rtt, ans, nil
}

// ask sends one probe request (ProbeProtocol or ProbeKeptProtocol) and
// reads the answer (nil for an empty frame).
func ask(s network.Stream, r *bufio.Reader) (*probeAnswer, error) {
	if _, err := s.Write([]byte{1}); err != nil {
		return nil, err
	}
	var size [2]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	k := binary.BigEndian.Uint16(size[:])
	if k > maxProbeFrame {
		return nil, fmt.Errorf("probe answer of %d bytes", k)
	}
	if k == 0 {
		return nil, nil
	}
	data := make([]byte, k)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, err
	}
	var ans probeAnswer
	if err := json.Unmarshal(data, &ans); err != nil {
		return nil, fmt.Errorf("probe answer: %w", err)
	}
	if len(ans.Suspects) > maxSuspects {
		ans.Suspects = ans.Suspects[:maxSuspects]
	}
	return &ans, nil
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
