package node

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/scope"
)

// Config describes a site's node. DefaultConfig fills every field but Site,
// DataDir and the trust list with WAN defaults; Validate checks the rest.
type Config struct {
	// Site is this site's name, as scopes spell it.
	Site string
	// DataDir keeps the identity key (and, for other packages, the
	// datastore). It is created if missing and locked while the node runs,
	// so two agents never share one identity.
	DataDir string
	// Listen are the multiaddrs to listen on. Default: TCP and QUIC on
	// port 4001 of every interface (the usual libp2p port; both, because
	// QUIC connects in one round trip and TCP passes stricter firewalls).
	// QUIC addresses are dropped when SwarmKey is set: libp2p private
	// networks protect TCP connections only.
	Listen []string
	// Announce, when set, replaces the addresses advertised to peers (a
	// site behind NAT announces its public address).
	Announce []string
	// Peers are bootstrap multiaddrs, each ending in /p2p/<peer id>. One
	// reachable site is enough: membership records tell the rest.
	Peers []string
	// Trust lists the peer ids allowed to connect. The node always trusts
	// itself. Without a trust list New refuses to start (ErrNoTrust):
	// an agent open to anyone would be a silent security hole. TrustAll
	// disables the check, for closed test networks only.
	Trust    []peer.ID
	TrustAll bool
	// Sites binds site names to peer ids (`--trust NAME=PEERID`, trust
	// file lines `NAME PEERID`): the only peer that may ever act as that
	// site, here and after any restart. Each bound peer is trusted. A name
	// left out is bound by its first claim, persisted in the data
	// directory (BindingsFile); see the design note in bindings.go. This
	// site's own entry, when present, must be this data directory's
	// identity: a second agent started with another site's name is
	// refused at start.
	Sites map[string]peer.ID
	// SwarmKey is an optional libp2p pre-shared network key (the
	// /key/swarm/psk/1.0.0/ file format). With a key, the node runs over
	// TCP only.
	SwarmKey []byte
	// Protocols are served on this host by another part of the site (the
	// catalog's replication, crdt.Protocols) whose handlers are set after
	// New returns. They are reserved before the host listens, so that
	// every connection's identify announces them: a protocol added later
	// reaches connected peers only by identify's push, which a starved
	// host loses, and a stream of a protocol the peerstore does not list
	// pays a negotiation round trip (after 100 in-process sites formed,
	// 215 of 9,900 peer entries lacked crdt's link protocol before, and
	// 119–185 after, the rest being identifies that never completed;
	// docs/scaling.md, proto33). A stream of one of them arriving before
	// its handler is set is reset.
	Protocols []protocol.ID
	// TopicAccess decides who may join a pubsub topic other than
	// membership's, from the topic name and the peer id alone. It is also
	// asked about the node itself before it joins a topic. Nil denies every
	// other topic.
	TopicAccess func(topic string, p peer.ID) bool

	// ProbeInterval is how often a probe round starts (each probes up to
	// ProbeFanout healthy sites and every site in trouble). 2 s notices a
	// lost site within seconds while costing a few bytes per second per
	// peer (memberlist's WAN profile probes every 5 s; edge sites serve
	// interactive requests, so we probe faster).
	ProbeInterval time.Duration
	// ProbeFanout is how many healthy sites a round probes when there are
	// more (sites that need attention are probed every round besides:
	// see the design note in schedule.go). 8: up to nine sites every site
	// is probed every round as when all were; beyond, each is probed at
	// least every ⌈(N-1)/8⌉ rounds (13 rounds, 26 s, at 100 sites), and a
	// site's probing costs 8 pings per interval whatever N.
	ProbeFanout int
	// ProbeTimeout bounds one probe (dial if needed, then ping). 3 s is far
	// above any terrestrial RTT (~300 ms antipodal) and above a TCP SYN
	// retransmission (1 s), so a timeout means loss, not distance.
	ProbeTimeout time.Duration
	// SuspectAfter consecutive failed probes make a site suspect: still
	// used by the planner, but flagged. 2: one lost probe on a WAN link is
	// ordinary and says nothing.
	SuspectAfter int
	// DownAfter consecutive failed probes make a site down: 4 misses is
	// 8 s of silence when the far host refuses, ~12 s when probes time
	// out: long enough to ride out a few lost packets or a route flap,
	// short enough that requests stop waiting on a dead site. See
	// DownBound.
	DownAfter int
	// RTTSmoothing is the EWMA weight of a new RTT sample. 0.3: a lasting
	// change shows within 3–4 probes, a single outlier moves it little.
	RTTSmoothing float64
	// AnnounceInterval is how often this site looks at its membership
	// record (its addresses, its network coordinate) and publishes it if
	// it changed (see recordChanged); it is published every
	// RecordRefresh intervals even so. 10 s: records change slowly,
	// every site receives every publication, and a site that connects
	// gets the record at once anyway, sent straight to it.
	AnnounceInterval time.Duration
	// RedialInterval is how soon a site that is down is dialled again
	// after a failed attempt, between probe rounds: 50 ms, so that a
	// healed cut is found within a few round trips (the side that
	// connects first also makes the other see it up at once). The delay
	// doubles up to MaxRedialBackoff. An attempt across a cut hangs until
	// ProbeTimeout, so a dead link costs one pending dial, not twenty a
	// second.
	RedialInterval time.Duration
	// MaxRedialBackoff caps the delay between attempts to reconnect to a
	// site that dropped. 250 ms (no doubling by default): a dead site
	// costs one dial attempt — a SYN — four times a second, which is
	// nothing beside finding a healed WAN link seconds earlier.
	MaxRedialBackoff time.Duration

	// Registerer receives the node's and libp2p's metrics (resource
	// manager included); nil creates a private registry (see
	// Node.Registry).
	Registerer *prometheus.Registry
	// Bandwidth, when set, counts every byte the host sends and receives
	// (benchmarks read it).
	Bandwidth metrics.Reporter
	// Logger receives the node's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a configuration with WAN defaults; Site, DataDir and
// the trust list are left for the caller.
func DefaultConfig() Config {
	return Config{
		Listen:           []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"},
		ProbeInterval:    2 * time.Second,
		ProbeTimeout:     3 * time.Second,
		ProbeFanout:      8,
		SuspectAfter:     2,
		DownAfter:        4,
		RTTSmoothing:     0.3,
		AnnounceInterval: 10 * time.Second,
		RedialInterval:   50 * time.Millisecond,
		MaxRedialBackoff: 250 * time.Millisecond,
	}
}

// DownBound is the longest a stopped site can stay "up" or "suspect" in
// this node's view: DownAfter failed probes, each taking at most
// max(ProbeInterval, ProbeTimeout) (a probe still running when the next
// is due is not doubled), plus one interval for the probe in flight when
// the site stopped. With the defaults: 4 × 3 s + 2 s = 14 s. It holds for
// a site that stops or crashes (its connections close, and it is probed
// at the next round), and for any silence among at most ProbeFanout+1
// sites. A site cut off silently (no connection closes) in a larger
// cluster waits for its turn in the rotation before its first failed
// probe: up to RotationBound more, less when another site that probed it
// passes its suspicion on (see schedule.go). A site starved of CPU
// stretches its probing by its health multiplier (up to
// MaxHealthMultiplier; see awareness.go): a site that went silent
// (probes time out) takes up to multiplier × DownBound; one that stopped
// (probes refused) DownBound plus one stretched interval.
func (c *Config) DownBound() time.Duration {
	return time.Duration(c.DownAfter)*max(c.ProbeInterval, c.ProbeTimeout) + c.ProbeInterval
}

// RotationBound is the longest a healthy site waits between two probes by
// this node in a cluster of sites sites: ⌈(sites-1)/ProbeFanout⌉ intervals
// (one up to ProbeFanout+1 sites).
func (c *Config) RotationBound(sites int) time.Duration {
	fanout := max(c.ProbeFanout, 1)
	rounds := max((sites-1+fanout-1)/fanout, 1)
	return time.Duration(rounds) * c.ProbeInterval
}

// Errors of Validate and New. The command line reports them as bad input.
var (
	// ErrBadConfig wraps every configuration problem.
	ErrBadConfig = errors.New("node: bad configuration")
	// ErrNoTrust: neither a trust list nor TrustAll.
	ErrNoTrust = errors.New("node: no trusted peers: give --trust [NAME=]PEERID or --trust-file FILE (or --trust-all on a closed test network)")
	// ErrDataDirInUse: another process runs a node on the data directory.
	ErrDataDirInUse = errors.New("node: data directory in use by another agent")
)

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, args...))
	}
	if c.Site == "" {
		return bad("a site name is required")
	}
	if err := scope.CheckName("site", c.Site); err != nil {
		return bad("%v", err)
	}
	if c.DataDir == "" {
		return bad("a data directory is required")
	}
	if len(c.Listen) == 0 {
		return bad("at least one listen address is required")
	}
	for _, list := range [][]string{c.Listen, c.Announce} {
		for _, a := range list {
			if _, err := multiaddr.NewMultiaddr(a); err != nil {
				return bad("address %q: %v", a, err)
			}
		}
	}
	for _, a := range c.Peers {
		if _, err := peer.AddrInfoFromString(a); err != nil {
			return bad("peer address %q (want /ip4/…/tcp/…/p2p/<peer id>): %v", a, err)
		}
	}
	if len(c.SwarmKey) > 0 {
		if _, err := pnet.DecodeV1PSK(bytes.NewReader(c.SwarmKey)); err != nil {
			return bad("swarm key: %v", err)
		}
		if len(tcpOnly(c.Listen)) == 0 {
			return bad("with a swarm key at least one TCP listen address is required (QUIC cannot carry the key)")
		}
	}
	holders := map[peer.ID]string{}
	for _, name := range slices.Sorted(maps.Keys(c.Sites)) {
		p := c.Sites[name]
		if err := scope.CheckName("site", name); err != nil {
			return bad("trust binding: %v", err)
		}
		if p.Validate() != nil {
			return bad("trust binding %s: no peer id", name)
		}
		if other, dup := holders[p]; dup {
			return bad("trust bindings: peer %s bound to both %s and %s (one name per peer)", p, other, name)
		}
		holders[p] = name
	}
	if len(c.Trust) == 0 && len(c.Sites) == 0 && !c.TrustAll {
		return ErrNoTrust
	}
	switch {
	case c.ProbeFanout < 1:
		return bad("probe fanout %d must be at least 1", c.ProbeFanout)
	case c.ProbeInterval <= 0, c.ProbeTimeout <= 0, c.AnnounceInterval <= 0, c.MaxRedialBackoff <= 0:
		return bad("probe interval, probe timeout, announce interval and redial backoff must be positive")
	case c.SuspectAfter < 1 || c.DownAfter <= c.SuspectAfter:
		return bad("need 1 <= suspect-after (%d) < down-after (%d)", c.SuspectAfter, c.DownAfter)
	case c.RTTSmoothing <= 0 || c.RTTSmoothing > 1:
		return bad("RTT smoothing %v must be in (0, 1]", c.RTTSmoothing)
	}
	return nil
}
