package crdt

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	lpmetrics "github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The tests build their own sites: a libp2p host on loopback, a pebble
// store in a temporary directory and a Manager. A connection gater lets a
// test cut and heal links; a bandwidth counter counts bytes per protocol.

// quiet logs warnings and errors only: tests read state, not logs.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// gater refuses connections to and from blocked peers, and counts the
// dials it refused.
type gater struct {
	mu      sync.Mutex
	blocked map[peer.ID]bool
	refused map[peer.ID]int // dials to a blocked peer
}

func (g *gater) set(p peer.ID, blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.blocked[p] = blocked
}

func (g *gater) allowed(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.blocked[p]
}

// refusedDials is how many dials to p the gater refused.
func (g *gater) refusedDials(p peer.ID) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refused[p]
}

func (g *gater) InterceptPeerDial(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.blocked[p] {
		return true
	}
	if g.refused == nil {
		g.refused = map[peer.ID]int{}
	}
	g.refused[p]++
	return false
}

func (g *gater) InterceptAddrDial(peer.ID, multiaddr.Multiaddr) bool { return true }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool         { return true }
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.allowed(p)
}
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// site is one real site: host, pebble store and manager.
type site struct {
	name  string
	id    peer.ID
	dir   string
	host  host.Host
	store *pebbleds.Datastore // the raw store, for inspection
	disk  *crashable          // what the manager writes to
	m     *Manager
	gater *gater
	bw    *byteCounter
	reg   *prometheus.Registry
}

// testNet holds the identities and data directories of a set of sites,
// which survive a site's stop and restart.
type testNet struct {
	t     testing.TB
	keys  map[string]crypto.PrivKey
	ids   map[string]peer.ID
	dirs  map[string]string
	sites map[string]*site
	// tune adjusts every manager's configuration before it starts.
	tune func(*Config)
	// beforeManager, when set, connects a starting site's host to the
	// running sites before its manager serves its protocols (as a
	// restarting agent's host does) and is called in between.
	beforeManager func(*site)
}

func newNet(t testing.TB, names ...string) *testNet {
	t.Helper()
	n := &testNet{t: t, keys: map[string]crypto.PrivKey{}, ids: map[string]peer.ID{}, dirs: map[string]string{}, sites: map[string]*site{}}
	base := t.TempDir()
	for _, name := range names {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		n.keys[name], n.ids[name], n.dirs[name] = key, id, filepath.Join(base, name)
	}
	t.Cleanup(func() {
		for _, s := range n.sites {
			s.close(true)
		}
	})
	return n
}

func (n *testNet) resolve(site string) (peer.ID, bool) {
	id, ok := n.ids[site]
	return id, ok
}

// start starts a site (again, from its data directory if it ran before)
// and connects it to every running site.
func (n *testNet) start(name string) *site {
	n.t.Helper()
	s := &site{name: name, id: n.ids[name], dir: n.dirs[name], gater: &gater{blocked: map[peer.ID]bool{}},
		bw: newByteCounter(), reg: prometheus.NewRegistry()}
	h, err := libp2p.New(
		libp2p.Identity(n.keys[name]),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionGater(s.gater),
		libp2p.BandwidthReporter(s.bw),
		libp2p.DisableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}),
	)
	if err != nil {
		n.t.Fatal(err)
	}
	s.host = h
	if s.store, err = OpenStore(filepath.Join(s.dir, "store")); err != nil {
		n.t.Fatal(err)
	}
	cfg := DefaultConfig()
	s.disk = &crashable{ds: s.store}
	cfg.Host, cfg.Datastore, cfg.Self = h, s.disk, name
	cfg.Resolve = n.resolve
	cfg.Logger = quiet
	cfg.Registerer = s.reg
	if n.tune != nil {
		n.tune(&cfg)
	}
	others := make([]string, 0, len(n.sites))
	for other := range n.sites {
		others = append(others, other)
	}
	n.sites[name] = s
	if n.beforeManager != nil {
		for _, other := range others {
			n.connect(name, other)
		}
		n.beforeManager(s)
	}
	if s.m, err = NewManager(context.Background(), cfg); err != nil {
		delete(n.sites, name)
		h.Close()
		s.store.Close()
		n.t.Fatal(err)
	}
	if n.beforeManager == nil {
		for _, other := range others {
			n.connect(name, other)
		}
	}
	return s
}

// startAll starts the sites, each connected to all others.
func (n *testNet) startAll(names ...string) {
	for _, name := range names {
		n.start(name)
	}
}

func (n *testNet) connect(a, b string) {
	n.t.Helper()
	sa, sb := n.sites[a], n.sites[b]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sa.host.Connect(ctx, peer.AddrInfo{ID: sb.id, Addrs: sb.host.Addrs()}); err != nil {
		n.t.Fatalf("connect %s to %s: %v", a, b, err)
	}
}

func (s *site) close(clean bool) {
	if !clean {
		s.disk.crash()
	}
	s.m.Close()
	s.host.Close()
	s.store.Close()
}

// stop stops a site: cleanly, or as a crash would: the store freezes
// first, so that nothing the manager does afterwards (its Close included,
// which only stops its goroutines) reaches the disk.
func (n *testNet) stop(name string, clean bool) {
	n.sites[name].close(clean)
	delete(n.sites, name)
}

// partition cuts every link between the two sides and refuses new ones;
// heal lets them connect again and reconnects them.
func (n *testNet) partition(left, right []string) {
	for _, a := range left {
		for _, b := range right {
			n.sites[a].gater.set(n.ids[b], true)
			n.sites[b].gater.set(n.ids[a], true)
			n.sites[a].host.Network().ClosePeer(n.ids[b])
			n.sites[b].host.Network().ClosePeer(n.ids[a])
		}
	}
}

func (n *testNet) heal(left, right []string) {
	for _, a := range left {
		for _, b := range right {
			n.sites[a].gater.set(n.ids[b], false)
			n.sites[b].gater.set(n.ids[a], false)
		}
	}
	for _, a := range left {
		for _, b := range right {
			n.connect(a, b)
		}
	}
}

func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasValue(s *site, sites []string, key, want string) error {
	v, ok, err := s.m.Get(context.Background(), sites, key)
	if err != nil {
		return err
	}
	if !ok || string(v) != want {
		return fmt.Errorf("%s: %s = %q (present %v), want %q", s.name, key, v, ok, want)
	}
	return nil
}

// rawScan returns every key and value of a site's datastore.
func rawScan(t testing.TB, s *site) map[string][]byte {
	t.Helper()
	res, err := s.store.Query(context.Background(), query.Query{})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	out := map[string][]byte{}
	for r := range res.Next() {
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		out[r.Key] = r.Value
	}
	return out
}

// keysUnder lists a site's keys under a prefix, sorted.
func keysUnder(t testing.TB, s *site, prefix string) []string {
	var out []string
	for k := range rawScan(t, s) {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// vecTotal sums every series of a counter vector.
func vecTotal(v *prometheus.CounterVec) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { v.Collect(ch); close(ch) }()
	total := 0.0
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil {
			total += d.GetCounter().GetValue()
		}
	}
	return total
}

// errCrashed is what a crashed site's store answers.
var errCrashed = errors.New("test: the site crashed")

// crashable wraps a site's store so that a test can simulate a crash: from
// the moment of the crash nothing more reaches the disk, every operation
// of the dropped manager fails, and the directory can be opened again.
type crashable struct {
	mu      sync.RWMutex
	crashed bool
	ds      ds.Batching
	// queries counts the queries made (scans of a prefix); has, the
	// Has calls.
	queries, has atomic.Int64
	// beforeWrite, when set, runs before every Put (batched or not).
	beforeWrite atomic.Pointer[func(ds.Key)]
}

func (c *crashable) writing(k ds.Key) {
	if f := c.beforeWrite.Load(); f != nil {
		(*f)(k)
	}
}

func (c *crashable) crash() {
	c.mu.Lock()
	c.crashed = true
	c.mu.Unlock()
}

func (c *crashable) do(f func() error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.crashed {
		return errCrashed
	}
	return f()
}

func (c *crashable) Get(ctx context.Context, k ds.Key) (v []byte, err error) {
	err = c.do(func() error { v, err = c.ds.Get(ctx, k); return err })
	return v, err
}

func (c *crashable) Has(ctx context.Context, k ds.Key) (ok bool, err error) {
	c.has.Add(1)
	err = c.do(func() error { ok, err = c.ds.Has(ctx, k); return err })
	return ok, err
}

func (c *crashable) GetSize(ctx context.Context, k ds.Key) (n int, err error) {
	err = c.do(func() error { n, err = c.ds.GetSize(ctx, k); return err })
	return n, err
}

func (c *crashable) Query(ctx context.Context, q query.Query) (query.Results, error) {
	c.queries.Add(1)
	var all []query.Entry
	err := c.do(func() error {
		res, err := c.ds.Query(ctx, q)
		if err != nil {
			return err
		}
		all, err = res.Rest()
		return err
	})
	if err != nil {
		return nil, err
	}
	return query.ResultsWithEntries(q, all), nil
}

func (c *crashable) Put(ctx context.Context, k ds.Key, v []byte) error {
	c.writing(k)
	return c.do(func() error { return c.ds.Put(ctx, k, v) })
}

func (c *crashable) Delete(ctx context.Context, k ds.Key) error {
	return c.do(func() error { return c.ds.Delete(ctx, k) })
}

func (c *crashable) Sync(ctx context.Context, k ds.Key) error {
	return c.do(func() error { return c.ds.Sync(ctx, k) })
}

func (c *crashable) Close() error { return nil }

func (c *crashable) Batch(ctx context.Context) (ds.Batch, error) {
	var b ds.Batch
	err := c.do(func() (err error) { b, err = c.ds.Batch(ctx); return err })
	if err != nil {
		return nil, err
	}
	return &crashableBatch{c: c, b: b}, nil
}

type crashableBatch struct {
	c *crashable
	b ds.Batch
}

func (b *crashableBatch) Put(ctx context.Context, k ds.Key, v []byte) error {
	b.c.writing(k)
	return b.c.do(func() error { return b.b.Put(ctx, k, v) })
}

func (b *crashableBatch) Delete(ctx context.Context, k ds.Key) error {
	return b.c.do(func() error { return b.b.Delete(ctx, k) })
}

func (b *crashableBatch) Commit(ctx context.Context) error {
	return b.c.do(func() error { return b.b.Commit(ctx) })
}

// byteCounter is a libp2p bandwidth reporter that counts exactly (the
// stock one meters rates and lags a second): bytes per peer and protocol.
type byteCounter struct {
	mu  sync.Mutex
	out map[peer.ID]map[protocol.ID]int64
	in  map[peer.ID]map[protocol.ID]int64
}

var _ lpmetrics.Reporter = (*byteCounter)(nil)

func newByteCounter() *byteCounter {
	return &byteCounter{out: map[peer.ID]map[protocol.ID]int64{}, in: map[peer.ID]map[protocol.ID]int64{}}
}

func (b *byteCounter) log(m map[peer.ID]map[protocol.ID]int64, n int64, proto protocol.ID, p peer.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if m[p] == nil {
		m[p] = map[protocol.ID]int64{}
	}
	m[p][proto] += n
}

func (b *byteCounter) LogSentMessageStream(n int64, proto protocol.ID, p peer.ID) {
	b.log(b.out, n, proto, p)
}

func (b *byteCounter) LogRecvMessageStream(n int64, proto protocol.ID, p peer.ID) {
	b.log(b.in, n, proto, p)
}

// sent returns the bytes sent to p, per protocol.
func (b *byteCounter) sent(p peer.ID) map[protocol.ID]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[protocol.ID]int64{}
	for k, v := range b.out[p] {
		out[k] = v
	}
	return out
}

func (b *byteCounter) LogSentMessage(int64)                                {}
func (b *byteCounter) LogRecvMessage(int64)                                {}
func (b *byteCounter) GetBandwidthForPeer(peer.ID) lpmetrics.Stats         { return lpmetrics.Stats{} }
func (b *byteCounter) GetBandwidthForProtocol(protocol.ID) lpmetrics.Stats { return lpmetrics.Stats{} }
func (b *byteCounter) GetBandwidthTotals() lpmetrics.Stats                 { return lpmetrics.Stats{} }
func (b *byteCounter) GetBandwidthByPeer() map[peer.ID]lpmetrics.Stats     { return nil }
func (b *byteCounter) GetBandwidthByProtocol() map[protocol.ID]lpmetrics.Stats {
	return nil
}
func (b *byteCounter) Reset()             {}
func (b *byteCounter) TrimIdle(time.Time) {}

// writeSeen has a write /k = v into the group of a and b, and waits until
// b holds it: the group exists on both sites, with one delta.
func writeSeen(t *testing.T, a, b *site) {
	t.Helper()
	ab := []string{"a", "b"}
	if err := a.m.Put(context.Background(), ab, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /k", func() error { return hasValue(b, ab, "/k", "v") })
}

// siteSets lists the subsets of names (in names' order) that keep
// accepts.
func siteSets(names []string, keep func(sites []string) bool) [][]string {
	var sets [][]string
	for mask := range 1 << len(names) {
		var sites []string
		for i, s := range names {
			if mask&(1<<i) != 0 {
				sites = append(sites, s)
			}
		}
		if keep(sites) {
			sets = append(sets, sites)
		}
	}
	return sets
}
