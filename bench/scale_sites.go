package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/crdt"
	"cheops/node"
	"cheops/scope"
)

// scaleSite is one in-process site of the scale scenario with what
// measures it: a byte counter on its host, a Prometheus registry for its
// crdt metrics, and a watcher that counts the catalog entries its
// replicas apply.
type scaleSite struct {
	name  string
	node  *node.Node
	store *pebbleds.Datastore
	m     *crdt.Manager
	reg   *prometheus.Registry
	bw    *scaleCounter
	stop  func()
	// held counts the changes under each key prefix of entryPrefixes
	// that this site's replicas applied (local writes included).
	held [len(entryPrefixes)]atomic.Int64
	// closed counts the connections of its host that closed.
	closed atomic.Int64
}

// entryPrefixes are the key spaces of the scenario: the scoped workload,
// the fully replicated one, the first writes into new groups, and the
// writes of the idle groups.
var entryPrefixes = [...]string{"/r/", "/f/", "/p/", "/i/"}

const (
	scopedSpace = iota
	fullSpace
	probeSpace
	idleSpace
)

// scaleCounter counts, exactly and at once, the stream bytes a host sends
// and receives, and those sent on the crdt package's protocols: on its
// anti-entropy protocols (crdt.DigestProtocol and DigestKeptProtocol: rounds per pair of sites,
// whose frames name no group while the two agree) and on the others
// (links, blocks: every message names its group). libp2p's
// BandwidthCounter updates its totals from a once-a-second sweeper; it
// stays underneath for the rest of the Reporter interface.
type scaleCounter struct {
	*metrics.BandwidthCounter
	sent, recv, crdtSent, digestSent atomic.Int64
}

func newScaleCounter() *scaleCounter {
	return &scaleCounter{BandwidthCounter: metrics.NewBandwidthCounter()}
}

func (c *scaleCounter) LogSentMessage(n int64) { c.sent.Add(n); c.BandwidthCounter.LogSentMessage(n) }
func (c *scaleCounter) LogRecvMessage(n int64) { c.recv.Add(n); c.BandwidthCounter.LogRecvMessage(n) }

func (c *scaleCounter) LogSentMessageStream(n int64, p protocol.ID, id peer.ID) {
	switch {
	case p == crdt.DigestProtocol || p == crdt.DigestKeptProtocol:
		c.digestSent.Add(n)
	case strings.HasPrefix(string(p), "/cheops/crdt/"):
		c.crdtSent.Add(n)
	}
	c.BandwidthCounter.LogSentMessageStream(n, p, id)
}

// scaleSites is a set of in-process sites and what a probe waits for.
type scaleSites struct {
	sites []*scaleSite
	names []string
	// Formed is how long it took every site to see every other up.
	Formed time.Duration

	// afterIdleBatch, when set, is called after each batch of idle
	// groups was read (0, then 1), before the next step: a benchmark
	// writes heap profiles there.
	afterIdleBatch func(batch int)

	mu      sync.Mutex
	waiting map[string]*probeWait // probe key → its wait
}

// probeWait is a first write into a new group, waited for at the group's
// other members.
type probeWait struct {
	writer    string
	remaining map[string]bool // members that have not seen it yet
	last      time.Time       // when the last of them saw it
	done      chan struct{}
}

// startScaleSites starts one in-process site per name (libp2p host on
// 127.0.0.1, pebble store, crdt manager), each bootstrapped from the first,
// with the node's default probe settings (what an agent runs), and gives
// up when, formWithin after the first start, they are not all started
// and seeing each other up. On error the sites started so far are
// returned for closing.
func startScaleSites(ctx context.Context, dir string, names []string, formWithin time.Duration) (*scaleSites, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ss := &scaleSites{names: names, waiting: map[string]*probeWait{}}
	var trust []peer.ID
	for _, n := range names {
		_, id, err := node.LoadIdentity(filepath.Join(dir, n))
		if err != nil {
			return ss, err
		}
		trust = append(trust, id)
	}
	start := time.Now()
	deadline := start.Add(formWithin)
	var boot []string
	for _, n := range names {
		if time.Now().After(deadline) {
			ss.Formed = time.Since(start)
			return ss, fmt.Errorf("bench: started only %d of %d sites within %v (each start is slower while the sites started probe one another)",
				len(ss.sites), len(names), formWithin)
		}
		nc := node.DefaultConfig()
		nc.Site, nc.DataDir, nc.Trust, nc.Peers = n, filepath.Join(dir, n), trust, boot
		nc.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		nc.Logger = quiet
		bw := newScaleCounter()
		nc.Bandwidth = bw
		nc.Protocols = crdt.Protocols
		nd, err := node.New(ctx, nc)
		if err != nil {
			return ss, fmt.Errorf("bench: site %s: %w", n, err)
		}
		store, err := crdt.OpenStore(filepath.Join(dir, n, "store"))
		if err != nil {
			nd.Close()
			return ss, err
		}
		reg := prometheus.NewRegistry()
		cc := crdt.DefaultConfig()
		cc.Host, cc.Datastore, cc.Self, cc.Resolve, cc.Logger = nd.Host(), store, n, nd.PeerOf, quiet
		cc.Registerer = reg
		cc.IdleAfter = scaleIdleAfter
		// CHEOPS_SCALE_MAX_AWAKE replaces the default bound on replicas
		// awake at once per site, for measuring it.
		if v, err := strconv.Atoi(os.Getenv("CHEOPS_SCALE_MAX_AWAKE")); err == nil && v > 0 {
			cc.MaxAwake = v
		}
		// CHEOPS_SCALE_SETTLE_AFTER (a duration, 0: off) replaces the
		// default settle time of anti-entropy, for measuring it.
		if v, err := time.ParseDuration(os.Getenv("CHEOPS_SCALE_SETTLE_AFTER")); err == nil && v >= 0 {
			cc.SettleAfter = v
		}
		m, err := crdt.NewManager(ctx, cc)
		if err != nil {
			nd.Close()
			store.Close()
			return ss, fmt.Errorf("bench: site %s: %w", n, err)
		}
		s := &scaleSite{name: n, node: nd, store: store, m: m, reg: reg, bw: bw}
		nd.Host().Network().Notify(&network.NotifyBundle{
			DisconnectedF: func(network.Network, network.Conn) { s.closed.Add(1) },
		})
		s.stop = m.Watch(func(_ []string, key string, _ []byte, deleted bool) {
			if deleted {
				return
			}
			for i, p := range entryPrefixes {
				if strings.HasPrefix(key, p) {
					s.held[i].Add(1)
					if i == probeSpace || i == idleSpace {
						ss.seen(s.name, key)
					}
					return
				}
			}
		})
		ss.sites = append(ss.sites, s)
		if boot == nil {
			boot = nd.Addrs()[:1]
		}
	}
	err := waitFor(ctx, time.Until(deadline), fmt.Sprintf("%d sites see each other up", len(names)), func() error {
		down := 0
		var example string
		for _, s := range ss.sites {
			// Sites, not View: a view copies every site's RTTs (N² entries).
			states := map[string]scope.State{}
			for _, st := range s.node.Sites() {
				states[st.Site] = st.State
			}
			for _, n := range names {
				if st, known := states[n]; n != s.name && st != scope.Up {
					down++
					if example == "" {
						example = fmt.Sprintf("%s sees %s %q", s.name, n, st)
						if !known {
							// Its record never arrived: no name for the peer.
							example = fmt.Sprintf("%s has no record of %s", s.name, n)
						}
					}
				}
			}
		}
		if down > 0 {
			return fmt.Errorf("%d of %d (observer, site) pairs not up, e.g. %s", down, len(names)*(len(names)-1), example)
		}
		return nil
	})
	ss.Formed = time.Since(start)
	return ss, err
}

// scaleIdleAfter is how long a group stays awake after its last use in
// these runs (30 s by default): short, so that the idle figures are taken
// within the profile's time.
const scaleIdleAfter = 5 * time.Second

// seen records that site applied the probe key.
func (ss *scaleSites) seen(site, key string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	w := ss.waiting[key]
	if w == nil || !w.remaining[site] {
		return
	}
	delete(w.remaining, site)
	if len(w.remaining) == 0 {
		w.last = time.Now()
		close(w.done)
	}
}

// expect registers a probe key before it is written; unexpect forgets
// it (the bench's own state must not count in the idle groups' heap).
func (ss *scaleSites) expect(key string, group []string) *probeWait {
	w := &probeWait{writer: group[0], remaining: map[string]bool{}, done: make(chan struct{})}
	for _, s := range group[1:] {
		w.remaining[s] = true
	}
	ss.mu.Lock()
	ss.waiting[key] = w
	ss.mu.Unlock()
	return w
}

func (ss *scaleSites) unexpect(key string) {
	ss.mu.Lock()
	delete(ss.waiting, key)
	ss.mu.Unlock()
}

func (ss *scaleSites) site(name string) *scaleSite {
	for _, s := range ss.sites {
		if s.name == name {
			return s
		}
	}
	return nil
}

// closeWithin bounds stopping a size's sites. libp2p's host could hang in
// Close (AutoNAT's prober closing its subscription while identify emitted
// into it: once 12 minutes in a quick run, 2 and 3 sites in two full
// profiles; node.go now runs no prober): a run then goes on, leaving
// the stuck sites' goroutines behind.
const closeWithin = time.Minute

// close stops every site, giving up after closeWithin (reported on log,
// with the step each stuck site was in and, in a file, the process's
// goroutines by stack).
func (ss *scaleSites) close(log *slog.Logger) {
	var wg sync.WaitGroup
	var stuck sync.Map // site → the step it is in
	for _, s := range ss.sites {
		wg.Add(1)
		stuck.Store(s.name, "stop")
		go func() {
			defer wg.Done()
			s.stop()
			stuck.Store(s.name, "crdt")
			s.m.Close()
			stuck.Store(s.name, "node")
			s.node.Close()
			stuck.Store(s.name, "store")
			s.store.Close()
			stuck.Delete(s.name)
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	closing := time.Now()
	select {
	case <-done:
		log.Info("scale: sites stopped", "sites", len(ss.sites), "took", time.Since(closing).Round(time.Millisecond))
	case <-time.After(closeWithin):
		var names []string
		stuck.Range(func(k, v any) bool { names = append(names, fmt.Sprintf("%s (in %s's Close)", k, v)); return true })
		slices.Sort(names)
		log.Warn("scale: sites did not stop; going on without them", "within", closeWithin, "sites", names, "goroutines", dumpGoroutines())
	}
}

// dumpGoroutines writes the process's goroutines, counted by stack, to a
// new file in the temporary directory and returns its path (or why it
// could not).
func dumpGoroutines() string {
	f, err := os.CreateTemp("", "cheops-scale-goroutines-*.txt")
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 1); err != nil {
		return err.Error()
	}
	return f.Name()
}

// traffic is what every site's host sent, in bytes: in all, on the crdt
// package's group protocols (links, blocks: each message names a group),
// and on its anti-entropy protocol (per pair of sites).
type traffic struct{ all, groups, digests int64 }

func (ss *scaleSites) traffic() traffic {
	var t traffic
	for _, s := range ss.sites {
		t.all += s.bw.sent.Load()
		t.groups += s.bw.crdtSent.Load()
		t.digests += s.bw.digestSent.Load()
	}
	return t
}

func (t traffic) minus(u traffic) traffic {
	return traffic{all: t.all - u.all, groups: t.groups - u.groups, digests: t.digests - u.digests}
}
