package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/internal/keptstream"
	"cheops/scope"
)

// MembershipTopic carries the sites' membership records.
const MembershipTopic = "/cheops/membership/1"

// Node is a site's libp2p presence: host, pubsub, membership and probes.
// Its methods are safe for concurrent use.
type Node struct {
	cfg      Config
	log      *slog.Logger
	host     host.Host
	ps       *pubsub.PubSub
	topic    *pubsub.Topic
	sub      *pubsub.Subscription
	gater    *trustGater
	registry *prometheus.Registry
	started  time.Time
	unlock   func()

	// persistMu serializes the writes of BindingsFile; bindMu guards
	// bindings (it is not held while claims are written: see
	// writeClaims). Lock order: persistMu, bindMu, mu. persistClosed,
	// under persistMu, is set by Close: a record handler libp2p still
	// runs then (host.Close does not wait for stream handlers) writes
	// nothing into a data directory its owner may be removing.
	persistMu     sync.Mutex
	persistClosed bool
	bindingWrites int // BindingsFile writes for claims, under persistMu (tests read it)
	bindMu        sync.Mutex
	bindings      *bindingTable

	mu     sync.Mutex
	bySite map[string]peer.ID // bound sites whose record arrived in this run
	byPeer map[peer.ID]*peerState
	rot    *rotation // every peer of byPeer, in the order healthy ones are probed
	// coord is this site's network coordinate (see coord.go); samples
	// counts the RTTs it took, under mu.
	coord   *coordinate.Client
	samples int
	// view is the last View built, nil once what it is built from has
	// changed (viewChangedLocked); stored under mu, read without it.
	view      atomic.Pointer[scope.View]
	dials     int       // probes that dial, at most dialLimit
	dialLimit int       // 1 to ProbeFanout (see dialDone)
	starvedAt time.Time // when the probe loop last ran late (see observe)
	health    health    // local health score (see awareness.go)
	// healthKept is when the score last fell for a ProbeInterval kept.
	healthKept time.Time
	conflicts  []Conflict
	// refusedClaims counts refused membership records per claimed name.
	refusedClaims map[string]int
	watchers      map[chan SiteEvent]struct{}

	// probes counts the probes this node started (each a dial if
	// needed, then a ping), for the metrics and the benchmarks.
	probes atomic.Int64
	// stats counts what the probes found (see probeStats).
	stats probeStats
	// keptProbes holds the stream of the last probe of each peer, for
	// the next (ProbeKeptProtocol).
	keptProbes keptstream.Pool

	stopLoops  context.CancelFunc // probe, announce, receive
	probeNow   chan struct{}      // starts a probe round before the next tick
	recheck    chan struct{}      // wakes the probe loop: a peer got into trouble
	stopPubSub context.CancelFunc // the pubsub router
	wg         sync.WaitGroup
	closed     sync.Once
}

// New starts a node: it locks cfg.DataDir, loads (or creates) the identity
// in it, listens, joins the membership topic, dials the bootstrap peers and
// starts probing. ctx bounds the start only; the node runs until Close.
func New(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "node", "site", cfg.Site)

	// Undo what was started if a later step fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: data directory: %w", ErrIdentity, err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	undo = append(undo, unlock)
	key, self, err := LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	bindings, err := openBindings(cfg, self, log)
	if err != nil {
		return nil, err
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	n := &Node{
		cfg: cfg, log: log, registry: reg, started: time.Now().UTC(), unlock: unlock,
		bindings:      bindings,
		bySite:        map[string]peer.ID{cfg.Site: self},
		byPeer:        map[peer.ID]*peerState{},
		rot:           newRotation(rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))),
		dialLimit:     min(2, cfg.ProbeFanout),
		refusedClaims: map[string]int{},
		watchers:      map[chan SiteEvent]struct{}{},
		gater:         newTrustGater(self, append(slices.Collect(maps.Values(cfg.Sites)), cfg.Trust...), cfg.TrustAll, log),
		probeNow:      make(chan struct{}, 1),
		recheck:       make(chan struct{}, 1),
	}
	if n.coord, err = coordinate.NewClient(coordConfig()); err != nil {
		return nil, fmt.Errorf("node: network coordinate: %w", err)
	}
	if cfg.TrustAll {
		log.Warn("trusting every peer (--trust-all): use on closed test networks only")
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ConnectionGater(n.gater),
		// Registers the resource manager's, swarm's and transports'
		// metrics on reg (rcmgr's obs collectors included).
		libp2p.PrometheusRegisterer(reg),
		libp2p.DisableRelay(),
		// A site's addresses are the operator's (listen, announce); no
		// relay or hole punching uses a reachability verdict. Stated,
		// it replaces AutoNAT's ambient prober with a fixed answer, and
		// with the prober goes a hang of go-libp2p v0.51.0's Close: the
		// observed-address manager stops first and stops reading
		// identify's events without unsubscribing, an identify handler's
		// emit then blocks on its full queue holding the event's lock,
		// and the prober's Close waits for that lock (2 and then 3 of
		// 100 sites did not stop within a minute in two full scale
		// profiles, docs/scaling.md idle31; TestHostRunsNoAutoNATProber).
		libp2p.ForceReachabilityPublic(),
		libp2p.Muxer(yamux.ID, muxer()),
	}
	if cfg.Bandwidth != nil {
		opts = append(opts, libp2p.BandwidthReporter(cfg.Bandwidth))
	}
	listen, announce := cfg.Listen, cfg.Announce
	if len(cfg.SwarmKey) > 0 {
		psk, err := pnet.DecodeV1PSK(bytes.NewReader(cfg.SwarmKey))
		if err != nil {
			return nil, fmt.Errorf("%w: swarm key: %v", ErrBadConfig, err)
		}
		// A private network protects TCP connections only; QUIC would
		// bypass the key, so only the TCP transport is enabled.
		opts = append(opts, libp2p.PrivateNetwork(psk))
		listen, announce = tcpOnly(listen), tcpOnly(announce)
		if dropped := len(cfg.Listen) - len(listen); dropped > 0 {
			log.Warn("swarm key set: QUIC cannot carry it, listening on TCP only", "dropped", dropped)
		}
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	// libp2p's TCP listener sets SO_REUSEPORT. With it alone, a second
	// agent on the host would bind the same port silently, the kernel
	// sharing connections between the two: each TCP address is therefore
	// bound once without the option first, which fails while any other
	// socket holds it.
	for _, a := range listen {
		if addr, err := multiaddr.NewMultiaddr(a); err == nil && len(addr) >= 2 && addr[1].Code() == multiaddr.P_TCP {
			if err := listenError(addr); err != nil {
				return nil, err
			}
		}
	}
	// Dials come from the listen IP address, never from the listen port
	// (siteDialer): a peer sees a site's connections come from the
	// site's own address (a firewall rule or the WAN emulation of the
	// benchmarks relies on it).
	dialer := &siteDialer{}
	opts = append(opts, libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(dialer.forAddr)))
	// The host listens once every handler is set, the protocols reserved
	// for the site's other parts included (Config.Protocols).
	opts = append(opts, libp2p.NoListenAddrs)
	if len(announce) > 0 {
		var addrs []multiaddr.Multiaddr
		for _, a := range announce {
			addrs = append(addrs, multiaddr.StringCast(a))
		}
		opts = append(opts, libp2p.AddrsFactory(func([]multiaddr.Multiaddr) []multiaddr.Multiaddr { return addrs }))
	}
	var requested []multiaddr.Multiaddr
	for _, a := range listen {
		addr, err := multiaddr.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("%w: listen address %q: %v", ErrBadConfig, a, err)
		}
		requested = append(requested, addr)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("node: start libp2p host: %w", err)
	}
	n.host = h
	undo = append(undo, func() { h.Close() })
	reg.MustRegister(&collector{n: n})
	for _, id := range cfg.Protocols {
		h.SetStreamHandler(id, func(s network.Stream) { _ = s.Reset() })
	}

	// The router lives until Close, not until ctx ends: Close stops it
	// after the topics that use it.
	psCtx, stopPubSub := context.WithCancel(context.Background())
	n.stopPubSub = stopPubSub
	undo = append(undo, stopPubSub)
	ps, err := pubsub.NewGossipSub(psCtx, h,
		// Flood publishing would send every message to every peer of a
		// topic; gossip through the mesh is enough and scales.
		pubsub.WithFloodPublish(false),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		// Catch-up after a partition delivers bursts: queues of 4096 keep
		// them instead of dropping (the defaults are 32).
		pubsub.WithValidateQueueSize(4096),
		pubsub.WithPeerOutboundQueueSize(4096),
		pubsub.WithSubscriptionFilter(topicFilter{n}),
		pubsub.WithPeerFilter(n.peerMayJoin),
	)
	if err != nil {
		return nil, fmt.Errorf("node: start pubsub: %w", err)
	}
	n.ps = ps
	if err := ps.RegisterTopicValidator(MembershipTopic, n.validateRecord); err != nil {
		return nil, fmt.Errorf("node: membership validator: %w", err)
	}
	if n.topic, err = ps.Join(MembershipTopic); err != nil {
		return nil, fmt.Errorf("node: join membership: %w", err)
	}
	undo = append(undo, func() { n.topic.Close() })
	if n.sub, err = n.topic.Subscribe(pubsub.WithBufferSize(256)); err != nil {
		return nil, fmt.Errorf("node: subscribe membership: %w", err)
	}
	if err := ctx.Err(); err != nil {
		n.sub.Cancel()
		return nil, fmt.Errorf("node: start: %w", err)
	}

	runCtx, stopLoops := context.WithCancel(context.Background())
	n.stopLoops = stopLoops
	h.SetStreamHandler(ProbeProtocol, n.handleProbe)
	h.SetStreamHandler(ProbeKeptProtocol, n.handleKeptProbe)
	h.SetStreamHandler(RecordProtocol, n.handleRecord)
	h.SetStreamHandler(SitesProtocol, n.handleSites)
	// A connection dropped here (256 opened faster than they are handled)
	// misses its record push; the periodic publication makes up for it.
	connected := make(chan peer.ID, 256)
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			n.connectedFrom(c.RemotePeer())
			select {
			case connected <- c.RemotePeer():
			default:
			}
		},
		DisconnectedF: func(_ network.Network, c network.Conn) {
			n.disconnectedFrom(c.RemotePeer())
		},
	})
	if err := n.listen(requested, dialer); err != nil {
		stopLoops()
		n.sub.Cancel()
		return nil, err
	}
	for _, a := range cfg.Peers {
		info, _ := peer.AddrInfoFromString(a)
		if info.ID == self {
			continue
		}
		if !n.gater.allowed(info.ID) {
			log.Warn("bootstrap peer is not trusted: it will be refused", "peer", info.ID)
		}
		h.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		n.mu.Lock()
		n.peerLocked(info.ID).bootstrap = true
		n.mu.Unlock()
	}
	n.wg.Add(3)
	go n.receiveRecords(runCtx)
	go n.announceLoop(runCtx, connected)
	go n.probeLoop(runCtx)
	log.Info("node started", "peer", self, "addrs", n.Addrs())
	return n, nil
}

// listen starts the host's listeners on requested, once every handler
// is set: the first identify of each connection then announces every
// protocol the site serves.
func (n *Node) listen(requested []multiaddr.Multiaddr, dialer *siteDialer) error {
	err := n.host.Network().Listen(requested...)
	listening := n.host.Network().ListenAddresses
	dialer.listening.Store(&listening)
	if err != nil {
		// No address at all could listen: say which one and why.
		for _, a := range requested {
			if lerr := listenError(a); lerr != nil {
				return lerr
			}
		}
		return fmt.Errorf("node: listen: %w", err)
	}
	if missing := missingListeners(requested, n.host.Network().ListenAddresses()); len(missing) > 0 {
		if err := listenError(missing[0]); err != nil {
			return err
		}
		return fmt.Errorf("%w on %s failed (is another agent running on this host? give this one another --listen)", ErrListen, missing[0])
	}
	return nil
}

// openBindings checks this site's own name against the trust
// configuration and builds the binding table from the configuration and
// the bindings persisted in the data directory (rewritten when the
// configuration overrides some).
func openBindings(cfg Config, self peer.ID, log *slog.Logger) (*bindingTable, error) {
	if p, ok := cfg.Sites[cfg.Site]; ok && p != self {
		return nil, fmt.Errorf("%w: the trust configuration binds site %s to peer %s, but this data directory's identity is %s: is this agent started with another site's name?",
			ErrBadConfig, cfg.Site, p, self)
	}
	for name, p := range cfg.Sites {
		if p == self && name != cfg.Site {
			return nil, fmt.Errorf("%w: the trust configuration binds this identity (%s) to site %s, not %s", ErrBadConfig, self, name, cfg.Site)
		}
	}
	persisted, err := loadBindings(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	t, overridden, stale := newBindingTable(Binding{Site: cfg.Site, Peer: self, Source: BoundSelf}, cfg.Sites, persisted)
	for _, b := range overridden {
		log.Warn("persisted site binding overridden by the trust configuration or this site's own name",
			"name", b.Site, "peer", b.Peer, "since", b.Since)
	}
	if stale {
		if err := saveBindings(cfg.DataDir, t.learned()); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
		}
	}
	return t, nil
}

func tcpOnly(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if strings.Contains(a, "/tcp/") {
			out = append(out, a)
		}
	}
	return out
}

// Host is the libp2p host, for protocols built on top of the node.
func (n *Node) Host() host.Host { return n.host }

// PubSub is the node's pubsub router, shared by every topic of the site.
// Topics other than membership's are open only as Config.TopicAccess says.
func (n *Node) PubSub() *pubsub.PubSub { return n.ps }

// Site is this site's name.
func (n *Node) Site() string { return n.cfg.Site }

// ID is this site's peer id.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Config is the configuration the node runs with.
func (n *Node) Config() Config { return n.cfg }

// Registry holds the node's and libp2p's metrics; other components may
// register theirs on it.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// Addrs are the node's listen addresses, each with its /p2p/ suffix, ready
// to be given to another site's --peer.
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.String()+"/p2p/"+n.host.ID().String())
	}
	return out
}

// Block cuts this site off from a peer: its connections are closed and
// new ones refused until Unblock. Operators use it to quarantine a site;
// tests and benchmarks use it to make partitions with real connections.
func (n *Node) Block(p peer.ID) {
	n.gater.setBlocked(p, true)
	_ = n.host.Network().ClosePeer(p)
}

// Unblock lets a blocked peer connect again and dials it at the next probe.
func (n *Node) Unblock(p peer.ID) {
	n.gater.setBlocked(p, false)
	n.mu.Lock()
	if ps, ok := n.byPeer[p]; ok {
		ps.nextDial, ps.backoff = time.Time{}, 0
	}
	n.mu.Unlock()
}

// Refused reports how many connections each untrusted peer attempted.
func (n *Node) Refused() map[peer.ID]int { return n.gater.Refused() }

// Close stops the node, in order: probing and announcing, the membership
// topic, the pubsub router, the host (every connection), and last the
// data directory's lock. Components built on the node (crdt groups) must
// be closed before it. Close waits for every goroutine the node started.
func (n *Node) Close() error {
	var err error
	n.closed.Do(func() {
		n.stopLoops()
		n.sub.Cancel()
		n.wg.Wait()
		n.keptProbes.Close()
		if e := n.topic.Close(); e != nil && !errors.Is(e, context.Canceled) {
			n.log.Debug("close membership topic", "err", e)
		}
		n.stopPubSub()
		err = n.host.Close()
		n.persistMu.Lock()
		n.persistClosed = true
		n.persistMu.Unlock()
		n.unlock()
		n.mu.Lock()
		for w := range n.watchers {
			close(w)
		}
		n.watchers = nil
		n.mu.Unlock()
		n.log.Info("node stopped")
	})
	return err
}

// topicFilter lets the node join membership and any topic TopicAccess
// allows for itself, and keeps only the incoming subscriptions that the
// peer filter would accept.
type topicFilter struct{ n *Node }

func (f topicFilter) CanSubscribe(topic string) bool {
	return topic == MembershipTopic || (f.n.cfg.TopicAccess != nil && f.n.cfg.TopicAccess(topic, f.n.host.ID()))
}

func (f topicFilter) FilterIncomingSubscriptions(from peer.ID, subs []*pb.RPC_SubOpts) ([]*pb.RPC_SubOpts, error) {
	out := subs[:0:0]
	for _, s := range subs {
		if f.n.peerMayJoin(from, s.GetTopicid()) {
			out = append(out, s)
		}
	}
	return out, nil
}

// peerMayJoin decides from the topic alone, without membership lookups, so
// that no subscription is dropped for lack of a record not yet received
// (pubsub never asks again: docs/architecture.md, "What the libraries do").
func (n *Node) peerMayJoin(p peer.ID, topic string) bool {
	if !n.gater.allowed(p) {
		return false
	}
	if topic == MembershipTopic {
		return true
	}
	return n.cfg.TopicAccess != nil && n.cfg.TopicAccess(topic, p)
}
