package crdt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	godscrdt "github.com/ipfs/go-ds-crdt"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/internal/keptstream"
)

// Keys of the manager's own records in the datastore.
var (
	registryPrefix = ds.NewKey("/cheops/groups")
	cleanKey       = ds.NewKey("/cheops/clean-shutdown")
)

// registryEntry remembers a joined group across restarts, with its
// members' peer ids.
type registryEntry struct {
	Sites []string  `json:"sites"`
	Peers []peer.ID `json:"peers"`
}

// Manager owns a site's replication groups. Its methods are safe for
// concurrent use.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	changes *changeQueue
	unclean bool
	// notifiee triggers catch-up when a peer connects.
	notifiee *network.NotifyBundle
	// replicaOptions are go-ds-crdt's options for every replica, less
	// the logger and the hooks (Group.open).
	replicaOptions *godscrdt.Options

	// exchanges holds the last anti-entropy result per group and member.
	exchanges exchanges
	// digests keeps the digest stream of the last round with each
	// member for the next (antientropy.go).
	digests keptstream.Pool
	// links carry head announcements to members, one per peer.
	links links

	// storeGate closes the groups' blockstores once the groups are
	// closed (storegate.go).
	storeGate storeGate

	// awake bounds the replicas open at once (Config.MaxAwake); waiting
	// lists the sleeping groups with deferred heads for wakerLoop, which
	// wakeup wakes (awake.go).
	awake   *awakeSet
	waitMu  sync.Mutex
	waiting []*Group
	wakeup  chan struct{}

	// expected counts, per group name, the writes announced (Expect)
	// and not arrived yet: *atomic.Int64.
	expected sync.Map

	// fetchActivity is when a block fetch last started or stored blocks
	// (unix ns): see Merging.
	fetchActivity atomic.Int64

	// connected carries the members that connected (or lost one of
	// their connections) to catchUpLoop.
	connected chan peer.ID

	// dirtyMu orders the changes of the groups' dirty marks
	// (dirtymark.go).
	dirtyMu sync.Mutex

	// losses carries the members with which a message was dropped here
	// to antiEntropyLoop (Manager.lost).
	losses chan peer.ID

	// pushing holds, per member, the restart signal of its running
	// schedule of heads pushes (schedulePushes).
	pushMu  sync.Mutex
	pushing map[peer.ID]chan struct{}

	mu     sync.Mutex
	groups map[string]*Group
	// sorted lists groups by name; nil after a join or leave until the
	// next Groups (anti-entropy lists them per member and round: sorting
	// thousands each time was 4 % of the CPU of a 30-site write phase).
	sorted []*Group
	peers  map[peer.ID]string // member peer → site, for every joined group
	byPeer peerGroups         // member peer → the groups shared with it
	closed bool
}

// Protocols are the protocols a Manager serves on its host. A node
// reserves them before its host listens (node.Config.Protocols), so that
// identify announces them from a connection's start: a stream to a peer
// whose identify did not list its protocol pays a negotiation round trip.
var Protocols = []protocol.ID{BlockProtocol, DigestProtocol, DigestKeptProtocol, LinkProtocol}

// NewManager opens the groups this site had joined, registers the block
// and heads protocols and starts watching connections for catch-up.
func NewManager(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	runCtx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg: cfg, log: log.With("component", "crdt", "site", cfg.Self),
		ctx: runCtx, cancel: cancel,
		groups: map[string]*Group{}, peers: map[peer.ID]string{}, byPeer: peerGroups{}, pushing: map[peer.ID]chan struct{}{}, losses: make(chan peer.ID, 64),
	}
	m.changes = newChangeQueue()
	m.awake, m.wakeup = newAwakeSet(), make(chan struct{}, 1)
	m.links = links{m: m, by: map[peer.ID]*link{}}
	m.metrics = newMetrics(reg, m)
	m.replicaOptions = replicaOptions(cfg)

	clean, err := cfg.Datastore.Has(ctx, cleanKey)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("crdt: read shutdown marker: %w", err)
	}
	entries, err := m.registry(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	m.unclean = !clean && len(entries) > 0
	if err := cfg.Datastore.Delete(ctx, cleanKey); err != nil {
		cancel()
		return nil, fmt.Errorf("crdt: clear shutdown marker: %w", err)
	}
	if err := cfg.Datastore.Sync(ctx, cleanKey); err != nil {
		cancel()
		return nil, fmt.Errorf("crdt: sync: %w", err)
	}
	for _, e := range entries {
		name, sites, err := groupName(e.Sites)
		if err != nil {
			continue
		}
		// Every group sleeps from the start, those with a repair due
		// too: after an unclean stop (their merged marks forgotten, see
		// forgetMerged), or marked dirty by a walk that failed before the
		// stop. Opening them all here put thousands of replicas past
		// MaxAwake; repairDue wakes them through acquire instead.
		g := m.newGroup(name, sites, e.Peers)
		switch {
		case m.unclean:
			if err := g.forgetMerged(ctx); err != nil {
				cancel()
				return nil, err
			}
			m.log.Warn("unclean stop detected: the group will be repaired", "group", g.name)
		case g.dirty(ctx):
			g.sleptDirty.Store(true)
		}
		m.addGroupLocked(g)
	}
	for id, serve := range map[protocol.ID]network.StreamHandler{BlockProtocol: m.serveBlocks, DigestProtocol: m.serveDigests,
		DigestKeptProtocol: m.serveKeptDigests, LinkProtocol: m.serveLink} {
		cfg.Host.SetStreamHandler(id, serve)
	}
	connected := make(chan peer.ID, 256)
	m.connected = connected
	m.notifiee = &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		select {
		case connected <- c.RemotePeer():
		default: // a burst of connections: the periodic rebroadcast covers it
		}
	}, DisconnectedF: func(n network.Network, c network.Conn) {
		// A connection that closes while the peer stays connected through
		// another (a heal closes the connection the cut stalled; an idle
		// second one survives it) may have swallowed what was written on
		// it, and no connection event will come: catch up as if the peer
		// had just connected.
		if n.Connectedness(c.RemotePeer()) != network.Connected {
			return
		}
		select {
		case connected <- c.RemotePeer():
		default:
		}
	}}
	cfg.Host.Network().Notify(m.notifiee)
	// Members connected before this manager served its protocols (the
	// host of a restarting site connects first) are caught up with as if
	// they had just connected: this side asks them at once rather than
	// waiting for their next push.
	for _, p := range cfg.Host.Network().Peers() {
		select {
		case connected <- p:
		default:
		}
	}
	m.wg.Add(6)
	go m.repairDue()
	go m.wakerLoop()
	go m.deliverChanges()
	go m.catchUpLoop(connected)
	go m.antiEntropyLoop()
	go m.repairCheckLoop()
	if cfg.IdleAfter > 0 {
		m.wg.Add(1)
		go m.sleepLoop()
	}
	return m, nil
}

// enter registers a goroutine at work (a stream handler, a block
// fetch), so that Close waits for it before the datastore goes away;
// false once closing. The goroutine calls m.wg.Done when it ends.
func (m *Manager) enter() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.wg.Add(1)
	return true
}

// Unclean reports whether the previous run ended without Close.
func (m *Manager) Unclean() bool { return m.unclean }

// mergeQuiet is how long after a block fetch started or stored blocks
// the manager still reports a merge: a walk of a DAG fetches, merges what
// came, then fetches the blocks below.
const mergeQuiet = 50 * time.Millisecond

// Merging reports whether some group started a block fetch or stored
// fetched blocks within the last mergeQuiet: after a heal, the other
// side's writes are being merged. A fetch hanging on a stalled
// connection does not count (it brings nothing to merge), and writes
// between connected members arrive whole and fetch nothing. It is cheap
// (one atomic load).
func (m *Manager) Merging() bool {
	return time.Since(time.Unix(0, m.fetchActivity.Load())) < mergeQuiet
}

// fetchActive notes that a fetch started or stored blocks (Merging).
func (m *Manager) fetchActive() { m.fetchActivity.Store(time.Now().UnixNano()) }

func (m *Manager) registry(ctx context.Context) ([]registryEntry, error) {
	res, err := m.cfg.Datastore.Query(ctx, query.Query{Prefix: registryPrefix.String()})
	if err != nil {
		return nil, fmt.Errorf("crdt: read group registry: %w", err)
	}
	defer res.Close()
	var out []registryEntry
	for r := range res.Next() {
		if r.Error != nil {
			return nil, fmt.Errorf("crdt: read group registry: %w", r.Error)
		}
		var e registryEntry
		if err := json.Unmarshal(r.Value, &e); err != nil {
			m.log.Error("skipping a corrupt group registry entry", "key", r.Key, "err", err)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

func (m *Manager) addGroupLocked(g *Group) {
	m.groups[g.name] = g
	m.sorted = nil
	m.byPeer.add(g, m.cfg.Host.ID())
	for i, p := range g.peers {
		m.peers[p] = g.sites[i]
	}
}

func (m *Manager) group(name string) *Group {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.groups[name]
}

func (m *Manager) siteOf(p peer.ID) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.peers[p]; ok {
		return s
	}
	return "unknown"
}

// join returns the group of a site set, opening it the first time.
func (m *Manager) join(ctx context.Context, sites []string) (*Group, error) {
	name, sorted, err := groupName(sites)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(sorted, m.cfg.Self) {
		return nil, fmt.Errorf("%w: %s is not in {%s}", ErrNotMember, m.cfg.Self, name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if g, ok := m.groups[name]; ok {
		return g, nil
	}
	peers := make([]peer.ID, len(sorted))
	for i, s := range sorted {
		p, ok := m.cfg.Resolve(s)
		if s == m.cfg.Self {
			p, ok = m.cfg.Host.ID(), true
		}
		if !ok {
			return nil, fmt.Errorf("%w: group %s: no peer id known for site %q", ErrUnknownSite, name, s)
		}
		peers[i] = p
	}
	return m.joinLocked(ctx, name, sorted, peers)
}

// joinWith opens a group with known peers unless it is open already.
func (m *Manager) joinWith(ctx context.Context, name string, sorted []string, peers []peer.ID) (*Group, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if g, ok := m.groups[name]; ok {
		return g, nil
	}
	return m.joinLocked(ctx, name, sorted, peers)
}

func (m *Manager) joinLocked(ctx context.Context, name string, sorted []string, peers []peer.ID) (*Group, error) {
	entry, _ := json.Marshal(registryEntry{Sites: sorted, Peers: peers})
	g := m.newGroup(name, sorted, peers)
	// The group's replica starts empty, in go-ds-crdt's current format:
	// recording the format with the registration spares its first open
	// the migration from format 0 (a scan that finds nothing in a new
	// group, 7 % of the bytes allocated in the 20-site scale write phase).
	b, err := m.cfg.Datastore.Batch(ctx)
	if err != nil {
		return nil, fmt.Errorf("crdt: register group %s: %w", name, err)
	}
	if err := errors.Join(b.Put(ctx, registryPrefix.ChildString(name), entry),
		b.Put(ctx, g.crdtPrefix().ChildString(formatKey), binary.AppendUvarint(nil, crdtFormat+1)),
		b.Commit(ctx)); err != nil {
		return nil, fmt.Errorf("crdt: register group %s: %w", name, err)
	}
	// Nothing of a group outlives its registry entry (Leave purges
	// first): a new one has merged no node, and counting its marks (a
	// query per group) was 11 % of the bytes of a 100-site write phase.
	g.mergedNodes.set(0)
	m.addGroupLocked(g)
	m.log.Info("joined group", "group", name)
	return g, nil
}

// joinClaimed joins the group a member announced, after checking that
// the claim names this site, that the member is one of the sites it
// names, and that every site whose peer membership knows matches.
func (m *Manager) joinClaimed(push groupClaim, remote peer.ID) (*Group, error) {
	name, sorted, err := groupName(push.Sites)
	if err != nil {
		return nil, err
	}
	if name != push.Group || len(push.Peers) != len(sorted) || !slices.Equal(sorted, push.Sites) {
		return nil, fmt.Errorf("%w: malformed group %q", ErrBadGroup, push.Group)
	}
	self, pusher := false, false
	peers := make([]peer.ID, len(sorted))
	for i, site := range sorted {
		p := push.Peers[i]
		// The ids kept are membership's and the host's own, not the
		// copies decoded from the message: an idle group keeps only a
		// slice of them (~0.1 KiB less at each member).
		peers[i] = p
		known, ok := m.cfg.Resolve(site)
		if site == m.cfg.Self {
			self = p == m.cfg.Host.ID()
			peers[i] = m.cfg.Host.ID()
			continue
		}
		if ok && known == p {
			peers[i] = known
		}
		if p == remote {
			if !ok || known != remote {
				return nil, fmt.Errorf("%w: pusher %s is not known as %s", ErrNotMember, remote, site)
			}
			pusher = true
		}
		if ok && known != p {
			return nil, fmt.Errorf("%w: site %s is %s here, not %s", ErrNotMember, site, known, p)
		}
	}
	if !self || !pusher {
		return nil, fmt.Errorf("%w: the group does not name this site and the pusher", ErrNotMember)
	}
	return m.joinWith(m.ctx, name, sorted, peers)
}

// existing returns the group of a site set if this site has joined it.
func (m *Manager) existing(sites []string) (*Group, error) {
	name, _, err := groupName(sites)
	if err != nil {
		return nil, err
	}
	if g := m.group(name); g != nil {
		return g, nil
	}
	return nil, nil
}

// Put writes key in the group of sites, joining it if needed. It returns
// once the write is applied locally and announced to the members (not
// once they have it). Concurrent writes into one group share one delta
// (commit.go).
func (m *Manager) Put(ctx context.Context, sites []string, key string, value []byte) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrBadInput)
	}
	g, err := m.join(ctx, sites)
	if err != nil {
		return err
	}
	if err := g.write(ctx, []string{key}, [][]byte{value}); err != nil {
		return fmt.Errorf("crdt: put %s in {%s}: %w", key, g.name, err)
	}
	return nil
}

// PutBatch writes several keys in the group of sites in one delta (with
// the writes made into the group at the same time).
func (m *Manager) PutBatch(ctx context.Context, sites []string, keys []string, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("%w: %d keys for %d values", ErrBadInput, len(keys), len(values))
	}
	if slices.Contains(keys, "") {
		return fmt.Errorf("%w: empty key", ErrBadInput)
	}
	g, err := m.join(ctx, sites)
	if err != nil {
		return err
	}
	if err := g.write(ctx, keys, values); err != nil {
		return fmt.Errorf("crdt: batch in {%s}: %w", g.name, err)
	}
	return nil
}

// Get reads key from the group of sites; ok is false when this site is
// not in that group or the key is absent.
func (m *Manager) Get(ctx context.Context, sites []string, key string) ([]byte, bool, error) {
	g, err := m.existing(sites)
	if err != nil || g == nil {
		return nil, false, err
	}
	r, done, _, err := g.use(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("crdt: get %s: %w", key, err)
	}
	defer done()
	v, err := r.store.Get(ctx, ds.NewKey(key))
	if errors.Is(err, ds.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("crdt: get %s: %w", key, err)
	}
	return v, true, nil
}

// Delete removes key from the group of sites.
func (m *Manager) Delete(ctx context.Context, sites []string, key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrBadInput)
	}
	g, err := m.existing(sites)
	if err != nil || g == nil {
		return err
	}
	r, done, _, err := g.use(ctx)
	if err != nil {
		return fmt.Errorf("crdt: delete %s: %w", key, err)
	}
	defer done()
	if err := r.store.Delete(ctx, ds.NewKey(key)); err != nil && !errors.Is(err, ds.ErrNotFound) {
		return fmt.Errorf("crdt: delete %s: %w", key, err)
	}
	g.announcedNow()
	return nil
}

// Sync makes every write acknowledged so far durable (the datastore's
// write-ahead log is flushed and fsynced): callers do it before they
// acknowledge a request to a user.
func (m *Manager) Sync(ctx context.Context) error {
	if err := m.cfg.Datastore.Sync(ctx, ds.NewKey("/")); err != nil {
		return fmt.Errorf("crdt: sync: %w", err)
	}
	return nil
}

// Scan calls fn for every key under prefix in every group of this site.
// A sleeping group is woken for its scan and put back to sleep after it.
func (m *Manager) Scan(ctx context.Context, prefix string, fn func(sites []string, key string, value []byte) error) error {
	for _, g := range m.Groups() {
		if err := g.scan(ctx, prefix, fn); err != nil {
			return err
		}
	}
	return nil
}

func (g *Group) scan(ctx context.Context, prefix string, fn func(sites []string, key string, value []byte) error) error {
	r, done, woke, err := g.use(ctx)
	if err != nil {
		return fmt.Errorf("crdt: scan {%s}: %w", g.name, err)
	}
	defer func() {
		done()
		if woke {
			g.sleep(ctx, time.Now())
		}
	}()
	res, err := r.store.Query(ctx, query.Query{Prefix: prefix})
	if err != nil {
		return fmt.Errorf("crdt: scan {%s}: %w", g.name, err)
	}
	defer res.Close()
	for e := range res.Next() {
		if e.Error != nil {
			return fmt.Errorf("crdt: scan {%s}: %w", g.name, e.Error)
		}
		if err := fn(g.Sites(), e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

// Watch calls fn for every change, local or remote, in every group, in
// the order the replicas applied them. fn must not block for long: it
// runs on the manager's delivery goroutine.
func (m *Manager) Watch(fn func(sites []string, key string, value []byte, deleted bool)) (stop func()) {
	return m.changes.watch(fn)
}

// WatchBatch is Watch for a watcher that takes changes in batches: the
// changes the store reported since the previous call, in order, so that
// it can fold many in at the cost of one (the catalog takes its lock
// once per batch, not once per key: after a heal, merges report
// thousands of keys). Change i is keys[i] in the group of sites[i],
// written with values[i] or deleted (deleted[i]). The slices are fn's to
// keep; the sites slices are shared and must not be modified. fn must not
// block and must not call the store's writing methods.
func (m *Manager) WatchBatch(fn func(sites [][]string, keys []string, values [][]byte, deleted []bool)) (stop func()) {
	return m.changes.watchBatch(fn)
}

// Groups lists the groups this site has joined, by name.
func (m *Manager) Groups() []*Group {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sorted == nil {
		m.sorted = make([]*Group, 0, len(m.groups))
		for _, g := range m.groups {
			m.sorted = append(m.sorted, g)
		}
		slices.SortFunc(m.sorted, func(a, b *Group) int { return strings.Compare(a.name, b.name) })
	}
	return slices.Clone(m.sorted)
}

// Awake counts the groups whose replica is open or being opened (the
// others sleep).
func (m *Manager) Awake() int {
	m.awake.mu.Lock()
	defer m.awake.mu.Unlock()
	return m.awake.n
}

// Leave closes the group of sites and drops its data from this site.
func (m *Manager) Leave(ctx context.Context, sites []string) error {
	name, _, err := groupName(sites)
	if err != nil {
		return err
	}
	m.mu.Lock()
	g, ok := m.groups[name]
	delete(m.groups, name)
	m.sorted = nil
	if ok {
		m.byPeer.remove(g)
	}
	m.mu.Unlock()
	if !ok {
		return nil
	}
	if err := g.shut(); err != nil {
		m.log.Warn("close group", "group", name, "err", err)
	}
	// Data first, then the entry: a group joined again after a crash in
	// between is then found whole or not at all (joinLocked counts no
	// merged node for it).
	if err := purge(ctx, m.cfg.Datastore, groupPrefix(name)); err != nil {
		return fmt.Errorf("crdt: drop data of group %s: %w", name, err)
	}
	if err := m.cfg.Datastore.Delete(ctx, registryPrefix.ChildString(name)); err != nil {
		return fmt.Errorf("crdt: unregister group %s: %w", name, err)
	}
	m.log.Info("left group", "group", name)
	return nil
}

func purge(ctx context.Context, store ds.Batching, prefix ds.Key) error {
	res, err := store.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: true})
	if err != nil {
		return err
	}
	defer res.Close()
	b, err := store.Batch(ctx)
	if err != nil {
		return err
	}
	for r := range res.Next() {
		if r.Error != nil {
			return r.Error
		}
		if err := b.Delete(ctx, ds.NewKey(r.Key)); err != nil {
			return err
		}
	}
	return b.Commit(ctx)
}

// catchUpLoop pushes shared groups' heads to every member that connects,
// and runs an anti-entropy round with it at once: the member answers
// with the groups whose heads differ and pushes its heads of them, so
// this side learns what it lacks one round trip after connecting,
// whichever side connected first.
//
// One round per member at a time: a connection event while one runs asks
// for one more after it (the running one may be on the connection that
// just closed), however many events come meanwhile. A heal brings two or
// three events per member within tens of milliseconds, and each started
// a round of its own, each comparing every shared group and counting
// every group's merged nodes on both sides.
func (m *Manager) catchUpLoop(connected <-chan peer.ID) {
	defer m.wg.Done()
	running := map[peer.ID]bool{} // a round on connect is running
	again := map[peer.ID]bool{}   // and another is due after it
	ended := make(chan peer.ID)
	round := func(p peer.ID) {
		running[p] = true
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := m.roundOnConnect(p); err != nil && m.ctx.Err() == nil {
				m.log.Debug("anti-entropy round on connect", "peer", p, "err", err)
			}
			select {
			case ended <- p:
			case <-m.ctx.Done():
			}
		}()
	}
	for {
		select {
		case <-m.ctx.Done():
			return
		case p := <-ended:
			delete(running, p)
			if again[p] {
				delete(again, p)
				round(p)
			}
		case p := <-connected:
			if p == m.cfg.Host.ID() {
				continue
			}
			if len(m.shared(p)) > 0 {
				if running[p] {
					again[p] = true
				} else {
					round(p)
				}
			}
			m.schedulePushes(p)
			for _, g := range m.shared(p) {
				g.kickRepair()
				g.wakeDirty()
			}
		}
	}
}

// schedulePushes sends p the heads of every group they share after each
// of the configured delays, on p's link. One schedule runs per member: a
// connection event while it runs starts it over (pushing at once again:
// the event may be the close of the connection the last pushes went on)
// instead of adding another. A heal brings two or three events per
// member within a few tens of milliseconds (the new connection, the
// stalled one closing, a simultaneous dial), and each added a whole
// schedule: 12 pushes of every shared group instead of 4, all of which
// the member decoded and handed to its replicas.
func (m *Manager) schedulePushes(p peer.ID) {
	m.pushMu.Lock()
	if again, ok := m.pushing[p]; ok {
		select {
		case again <- struct{}{}:
		default:
		}
		m.pushMu.Unlock()
		return
	}
	again := make(chan struct{}, 1)
	m.pushing[p] = again
	m.pushMu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		start, next := time.Now(), 0
		for {
			if next == len(m.cfg.PushDelays) {
				m.pushMu.Lock()
				select {
				case <-again:
					m.pushMu.Unlock()
					start, next = time.Now(), 0
					continue
				default:
				}
				delete(m.pushing, p)
				m.pushMu.Unlock()
				return
			}
			t := time.NewTimer(time.Until(start.Add(m.cfg.PushDelays[next])))
			select {
			case <-m.ctx.Done():
				t.Stop()
				return
			case <-again:
				t.Stop()
				start, next = time.Now(), 0
				continue
			case <-t.C:
			}
			next++
			for _, g := range m.shared(p) {
				if err := g.pushHeads(m.ctx, p); err != nil && m.ctx.Err() == nil {
					m.log.Debug("push heads", "group", g.name, "peer", p, "err", err)
				}
			}
		}
	}()
}

// roundOnConnect runs the round with a member that just connected. A
// round that fails fast is tried again after 25, 50, 100 ... 800 ms (1.6 s
// in all; the heads pushes of schedulePushes remain behind it): the host
// of a restarting agent connects before its manager serves the digest
// protocol, and a group made while it was down (which it has not joined,
// so it starts no round of its own) otherwise waited for the next heads
// push, 250 ms later (BenchmarkCatchUp: the first owed create ran about
// 560 ms after the restart in half the runs, 280 ms in the others). A
// slow failure (a member that does not answer) is left to the periodic
// rounds.
func (m *Manager) roundOnConnect(p peer.ID) error {
	wait := connectRetryFirst
	for {
		start := time.Now()
		// Every group: what was in flight may have gone with a
		// connection that closed.
		_, err := m.digestRound(m.ctx, p, true)
		if err == nil || time.Since(start) > connectRetryFast || wait > connectRetryLast {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait *= 2
	}
}

// A round on connect that failed fast (within connectRetryFast) is tried
// again after connectRetryFirst, then after twice as long each time up
// to connectRetryLast.
const (
	connectRetryFirst = 25 * time.Millisecond
	connectRetryLast  = 800 * time.Millisecond
	connectRetryFast  = 250 * time.Millisecond
)

// sleepLoop puts idle groups to sleep: one timer for all of them, every
// quarter of IdleAfter (a group sleeps between IdleAfter and 1.25 ×
// IdleAfter after its last use).
func (m *Manager) sleepLoop() {
	defer m.wg.Done()
	t := time.NewTicker(max(m.cfg.IdleAfter/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		idleSince := time.Now().Add(-m.cfg.IdleAfter)
		for _, g := range m.Groups() {
			if m.ctx.Err() != nil {
				return
			}
			g.sleep(m.ctx, idleSince)
		}
	}
}

// repairCheckLoop asks every awake group to check its dirty mark each
// RepairInterval (a walk that failed with nothing else to kick a repair):
// one timer for all groups, where each replica used to keep a repair
// goroutine and its timer.
func (m *Manager) repairCheckLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.RepairInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		for _, g := range m.Groups() {
			if m.ctx.Err() != nil {
				return
			}
			g.kickRepair()
			g.wakeDirty()
		}
	}
}

// Close stops every group and records a clean shutdown.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.cfg.Host.Network().StopNotify(m.notifiee)
	m.cfg.Host.RemoveStreamHandler(BlockProtocol)
	m.cfg.Host.RemoveStreamHandler(DigestProtocol)
	m.cfg.Host.RemoveStreamHandler(DigestKeptProtocol)
	m.cfg.Host.RemoveStreamHandler(LinkProtocol)
	m.cancel()
	m.wg.Wait()
	err := m.closeGroups()
	m.storeGate.close()
	m.changes.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if e := m.cfg.Datastore.Put(ctx, cleanKey, []byte(time.Now().UTC().Format(time.RFC3339))); e != nil {
		err = errors.Join(err, fmt.Errorf("crdt: write shutdown marker: %w", e))
	}
	if e := m.cfg.Datastore.Sync(ctx, ds.NewKey("/")); e != nil {
		err = errors.Join(err, fmt.Errorf("crdt: sync: %w", e))
	}
	return err
}

func (m *Manager) closeGroups() error {
	m.mu.Lock()
	groups := m.groups
	m.groups, m.sorted, m.byPeer = map[string]*Group{}, nil, peerGroups{}
	m.mu.Unlock()
	var err error
	for _, g := range groups {
		err = errors.Join(err, g.shut())
	}
	return err
}
