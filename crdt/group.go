package crdt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	dag "github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	"github.com/ipfs/go-datastore/query"
	crdt "github.com/ipfs/go-ds-crdt"
	"github.com/ipfs/go-ds-crdt/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// Group is one replication group: the replica of the data shared by
// exactly one set of sites.
//
// Invariant (nothing leaves the group): its announcements are sent only
// to its members' links, and a link message is accepted only from a
// member of the group it names; its blocks live in its own blockstore
// namespace, are served only to its members and fetched only from its
// connected members.
//
// A group sleeps when it has been idle for Config.IdleAfter: its
// go-ds-crdt replica is closed and only its name, members and blockstore
// handle stay in memory (no goroutine, no timer). Anything that needs the
// replica (a local read or write, an announcement from a member, a repair)
// wakes it; what anti-entropy and heads pushes need of a sleeping group,
// its heads, is read from the datastore.
type Group struct {
	m     *Manager
	name  string
	sites []string
	peers []peer.ID // the members' peer ids, in the order of sites
	// view is the group's blockstore, a stateless view of the site's
	// datastore under the group's prefix: built when first needed and
	// dropped when the group sleeps (and when an announcement's blocks
	// were stored without waking it), so that a sleeping group keeps
	// none (its four wrappers were ~0.2 KiB at each member). See blocks.
	view atomic.Pointer[blockView]
	// arrivals tracks fetches in progress and the walks waiting for them.
	arrivals arrivals
	// sources remembers which member announced which heads (blocks.go).
	sources sources
	// active is when the group was last used or changed (unix ns): the
	// sweeper puts it to sleep IdleAfter later.
	active atomic.Int64
	// heard is when a member last sent heads or blocks of the group (unix
	// ns, 0: never).
	heard atomic.Int64
	// announced is when this site last wrote into the group or read a
	// member's announcement of a new delta (unix ns, 0: not since it
	// started): the clock of anti-entropy's settle rule (announcedNow).
	announced atomic.Int64
	// lastDigest caches the anti-entropy digest as of active.
	lastDigest atomic.Pointer[groupDigest]
	// lastSample caches the known sample of block requests (knownSample)
	// as of the heads it was taken from.
	lastSample atomic.Pointer[knownSampleCache]
	// metas caches the links and heights of blocks the walks read
	// (blockmeta.go).
	metas metaCache
	// commits queues local writes for group commit (commit.go).
	commits commits
	// mergedNodes counts the DAG nodes merged (antientropy.go).
	mergedNodes mergedCount

	// deferred holds heads announced while the group slept and no slot
	// was free (awake.go); waiting: it is in the manager's waker queue
	// (guarded by Manager.waitMu).
	deferred deferredHeads
	waiting  bool
	// sleptDirty: asleep with a repair due (put to sleep dirty or in the
	// middle of a repair to free a slot, left asleep dirty at startup,
	// its merged marks forgotten); repaired when it wakes.
	sleptDirty atomic.Bool
	// orphans watches for a branch top marked merged that no head
	// reaches (orphan.go).
	orphans orphanWatch
	// exchanged is anti-entropy's last result with each member, in the
	// order of peers (nil before the first; guarded by
	// Manager.exchanges.mu).
	exchanged []exchangeResult

	mu     sync.Mutex
	rep    *replica // nil while the group sleeps
	users  int      // calls holding rep
	closed bool
	// dirtyMark keeps whether go-ds-crdt's dirty mark is set
	// (dirtymark.go); beside closed, in what was padding.
	dirtyMark dirtyMark
}

// replica is a group's open go-ds-crdt replica. Its repairs run on
// demand (repairRun): a replica with nothing to repair keeps no
// goroutine of this package.
type replica struct {
	g     *Group
	store *crdt.Datastore
	bcast *broadcaster
	// inHand is the broadcaster as go-ds-crdt sees it: it tells whether
	// an announcement is queued or being merged (see handOff).
	inHand *handOff
	// ctx ends with the replica; repairs holds the repair in progress.
	ctx     context.Context
	cancel  context.CancelFunc
	repairs sync.WaitGroup
	// repairing: a repair goroutine runs; again: it was asked to check
	// once more; forced: repair even though the replica is not marked
	// dirty.
	repairing, again, forced atomic.Bool
	// kick cuts short the wait before a failed repair's retry.
	kick chan struct{}
}

// Sites are the group's members.
func (g *Group) Sites() []string { return slices.Clone(g.sites) }

// Name is the group's canonical name: its sorted sites, comma-separated.
func (g *Group) Name() string { return g.name }

// groupPrefix is where group name keeps its state. A group's name is
// its site names, none empty nor holding a "/" (groupName), so "/g/" and
// the name is already a clean key, built without the path cleaning of
// ds.NewKey and ChildString; a name that cleaning would change (one
// site named "." or "..") takes that way.
func groupPrefix(name string) ds.Key {
	if name == "." || name == ".." {
		return ds.NewKey("/g").ChildString(name)
	}
	return ds.RawKey("/g/" + name)
}

// crdtPrefix is where the group's go-ds-crdt replica keeps its state.
func (g *Group) crdtPrefix() ds.Key {
	if g.name == "." || g.name == ".." {
		return groupPrefix(g.name).ChildString("crdt")
	}
	return ds.RawKey("/g/" + g.name + "/crdt")
}

// newGroup makes a sleeping group.
func (m *Manager) newGroup(name string, sites []string, peers []peer.ID) *Group {
	g := &Group{m: m, name: name, sites: sites, peers: peers}
	g.touch()
	return g
}

// blockView holds a group's blockstore (Group.view).
type blockView struct{ blockstore.Blockstore }

// blocks is the group's blockstore: its blocks under the group's prefix,
// the store gate around every call, the block metadata cache filled on
// the way. Views are interchangeable: one built while another is
// dropped reads and writes the same keys.
func (g *Group) blocks() blockstore.Blockstore {
	if v := g.view.Load(); v != nil {
		return v.Blockstore
	}
	v := &blockView{gatedBlockstore{gate: &g.m.storeGate, Blockstore: metaBlockstore{Blockstore: blockstore.NewBlockstore(namespace.Wrap(g.m.cfg.Datastore, groupPrefix(g.name).ChildString("blocks")),
		// Callers check for the block first where it matters; rewriting a
		// block under its own hash is harmless.
		blockstore.NoPrefix(), blockstore.WriteThrough(true)), metas: &g.metas}}}
	g.view.CompareAndSwap(nil, v)
	return v.Blockstore
}

// member reports whether p is one of the group's members. A group has
// a few members: a scan of its peers is as fast as a map, which cost
// every group about 0.2 KiB at each of its members.
func (g *Group) member(p peer.ID) bool { return slices.Contains(g.peers, p) }

func (g *Group) touch() { g.active.Store(time.Now().UnixNano()) }

// use returns the group's replica, waking the group if it sleeps (which
// takes one of the site's MaxAwake slots, waiting with ctx while none is
// free); done must be called when the caller no longer needs it. woke
// reports whether this call woke the group.
func (g *Group) use(ctx context.Context) (r *replica, done func(), woke bool, err error) {
	return g.wake(ctx, slotAny, wakeUse)
}

// What woke a group (the label of the wakes counter).
const (
	wakeUse          = "use"
	wakeWrite        = "write"
	wakeAnnouncement = "announcement"
	wakePush         = "push"
	wakeDeferred     = "deferred"
	wakeRepair       = "repair"
	wakeOrphan       = "orphan"
)

// wake is use, getting a slot as mode allows (acquire): a group that
// would need a slot while none can be had is left asleep and wake
// returns errNoSlot. cause says what wakes it, for the metrics.
func (g *Group) wake(ctx context.Context, mode slotMode, cause string) (r *replica, done func(), woke bool, err error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, nil, false, ErrClosed
	}
	if g.rep != nil {
		r = g.hold()
		g.mu.Unlock()
		return r, g.release, false, nil
	}
	g.mu.Unlock()
	// The slot is taken holding no group's mutex: taking it may put
	// another group to sleep, under that group's mutex.
	if err := g.m.acquire(ctx, mode); err != nil {
		return nil, nil, false, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.rep != nil {
		// Closed meanwhile, or woken by another caller: the slot is not
		// needed.
		g.m.awake.release(nil)
		if g.closed {
			return nil, nil, false, ErrClosed
		}
		return g.hold(), g.release, false, nil
	}
	if g.rep, err = g.open(); err != nil {
		g.m.awake.release(nil)
		return nil, nil, false, err
	}
	g.m.awake.opened(g)
	g.m.metrics.wakes.WithLabelValues(cause).Inc()
	if g.sleptDirty.Swap(false) {
		// A repair is due (sleptDirty): run it now, dirty mark or not
		// (put to sleep in the middle of a forced repair, the replica
		// may be clean).
		g.rep.forced.Store(true)
		g.rep.kickNow()
	}
	return g.hold(), g.release, true, nil
}

// hold counts one more user of the open replica. Called with g.mu held.
func (g *Group) hold() *replica {
	g.users++
	g.touch()
	return g.rep
}

// release ends a use of the replica (the done of use): once the last
// user leaves, a caller waiting for a slot may put the group to sleep.
func (g *Group) release() {
	g.mu.Lock()
	g.users--
	last := g.users == 0
	g.mu.Unlock()
	g.touch()
	if last {
		g.m.awake.signal()
	}
}

// awake returns the open replica, or nil while the group sleeps. The
// replica may be put to sleep right after: callers only signal it.
func (g *Group) awake() *replica {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rep
}

// replicaOptions are go-ds-crdt's options for the replicas of a
// manager configured with cfg, less the logger and the hooks.
func replicaOptions(cfg Config) *crdt.Options {
	opts := crdt.DefaultOptions()
	opts.RebroadcastInterval = cfg.RebroadcastInterval
	opts.NumWorkers = cfg.Workers
	opts.DAGSyncerTimeout = cfg.FetchTimeout
	// The group's own repair loop replaces go-ds-crdt's: it also runs
	// when a member connects, when a missing block can be fetched.
	opts.RepairInterval = 0
	return opts
}

// open starts the group's go-ds-crdt replica. Called with g.mu held.
func (g *Group) open() (*replica, error) {
	m := g.m
	r := &replica{g: g, kick: make(chan struct{}, 1)}
	r.bcast = newBroadcaster(g)
	dags := dag.NewDAGService(blockservice.New(g.blocks(), exchange{g}))
	opts := *m.replicaOptions // a copy: go-ds-crdt's defaults make a logger each time
	opts.Logger = crdtLogger{l: m.log, group: g.name}
	// The hooks run inside go-ds-crdt's merge batch: they only queue.
	opts.PutHook = func(k ds.Key, v []byte) {
		g.touch()
		m.changes.add(change{sites: g.sites, key: k.String(), value: v})
	}
	opts.DeleteHook = func(k ds.Key) {
		g.touch()
		m.changes.add(change{sites: g.sites, key: k.String(), deleted: true})
	}
	var err error
	r.inHand = &handOff{broadcaster: r.bcast, seed: newSeedGate()}
	r.store, err = crdt.New(newCountingStore(g), g.crdtPrefix(), dags, r.inHand, &opts)
	if err != nil {
		r.bcast.close()
		return nil, fmt.Errorf("crdt: group %s: %w", g.name, err)
	}
	r.inHand.seed.store.Store(r.store)
	r.ctx, r.cancel = context.WithCancel(m.ctx)
	g.metas.enable()
	return r, nil
}

// forgetMerged forgets the group's merged marks and marks it dirty,
// while it sleeps (under g.mu, or before anything can wake it): its next
// wake repairs it (sleptDirty), re-merging what its heads reach (merging
// is idempotent), and a branch top whose marks were left without its
// branch is walked again when it is next announced. Used after an
// unclean stop (a crash in the middle of a branch walk leaves its upper
// part marked processed and its head unrecorded; go-ds-crdt then skips
// that branch when its head comes again, and Repair, which walks from
// the recorded heads, never reaches it: upstream #279) and for an
// orphaned branch top (orphan.go). The dirty mark survives another
// crash until a repair completes.
func (g *Group) forgetMerged(ctx context.Context) error {
	err := forgetProcessed(ctx, g.m.cfg.Datastore, g.crdtPrefix().ChildString(processedNamespace))
	if err == nil {
		if err = g.dirtyMark.change(&g.m.dirtyMu, true, func() error { return g.m.cfg.Datastore.Put(ctx, g.dirtyKey(), nil) }); err != nil {
			err = fmt.Errorf("mark dirty: %w", err)
		}
	}
	if err != nil {
		// Some marks may be gone: counted again when next needed.
		g.mergedNodes.forget()
	} else {
		g.mergedNodes.set(0)
	}
	g.lastDigest.Store(nil)
	g.sleptDirty.Store(true)
	if err != nil {
		return fmt.Errorf("crdt: group %s: %w", g.name, err)
	}
	return nil
}

// forget drops the count: it is counted from the store at the next need.
func (c *mergedCount) forget() {
	c.mu.Lock()
	c.known = false
	c.mu.Unlock()
}

// close stops the replica: its repair, then go-ds-crdt.
func (r *replica) close() error {
	r.cancel()
	r.repairs.Wait()
	err := r.store.Close()
	r.bcast.close()
	return err
}

// sleep closes the replica if nothing uses it, nothing is queued or
// fetched, it is not marked dirty and it has been idle since idleSince.
// It reports whether the group sleeps now.
func (g *Group) sleep(ctx context.Context, idleSince time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rep == nil {
		return true
	}
	if time.Unix(0, g.active.Load()).After(idleSince) || !g.idleLocked(ctx, false) {
		return false
	}
	g.closeLocked()
	return true
}

// evict puts the group to sleep to free its slot for another (acquire):
// only when nothing uses its replica and nothing is queued, merged or
// fetched, however recently it was used; a replica marked dirty or being
// repaired only if dirty is set (it is then repaired when it wakes). It
// reports whether it closed the replica.
func (g *Group) evict(ctx context.Context, dirty bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rep == nil || !g.idleLocked(ctx, dirty) {
		return false
	}
	if dirty && (g.rep.repairing.Load() || g.rep.store.IsDirty(ctx)) {
		// A repair cut short, forced ones included (the replica is then
		// clean): it runs again when the group wakes.
		g.sleptDirty.Store(true)
	}
	g.closeLocked()
	return true
}

// idleLocked reports whether the open replica has no user and no work
// (an announcement queued or being merged, a job queued, a block being
// fetched), and, unless dirty is set, is neither marked dirty nor being
// repaired. With dirty set, a replica marked dirty or in the middle of a
// repair counts as idle: the caller puts it to sleep with sleptDirty
// set. Called with g.mu held.
func (g *Group) idleLocked(ctx context.Context, dirty bool) bool {
	r := g.rep
	if g.users > 0 || r.inHand.unfinished() || r.repairing.Load() && !dirty {
		return false
	}
	if g.arrivals.fetching() > 0 || r.store.InternalStats(ctx).QueuedJobs > 0 {
		return false
	}
	return dirty || !r.store.IsDirty(ctx)
}

// merging reports whether the group holds heads it has not merged yet:
// announced while it slept and waiting for a slot (deferred), handed to
// its replica and not finished, or waiting for blocks being fetched.
func (g *Group) merging() bool {
	g.deferred.mu.Lock()
	deferred := len(g.deferred.heads) > 0
	g.deferred.mu.Unlock()
	if deferred {
		return true
	}
	if g.arrivals.fetching() > 0 {
		return true
	}
	r := g.awake()
	return r != nil && r.inHand.unfinished()
}

// closeLocked closes the open replica and frees its slot. Called with
// g.mu held.
func (g *Group) closeLocked() {
	// The replica is idle: its heads in memory are those it stored. They
	// are kept as the sleeping group's digest (digest).
	ctx := g.m.ctx
	st := g.rep.store.InternalStats(ctx)
	heads := st.Heads
	if err := g.rep.close(); err != nil {
		g.m.log.Warn("close an idle group", "group", g.name, "err", err)
	}
	g.rep = nil
	// A head below another dropped, a head not merged repaired
	// (frontier.go).
	heads, repair := g.frontierCheck(ctx, heads)
	g.dropAwakeState()
	g.m.metrics.sleeps.Inc()
	if repair {
		// Due when it wakes: at the next announcement (no head is marked
		// merged now), or as soon as a slot can be had.
		if g.m.enter() {
			go func() {
				defer g.m.wg.Done()
				g.wakeDirty()
			}()
		}
		return
	}
	if n := g.processedCount(ctx); n >= 0 {
		g.lastDigest.Store(&groupDigest{active: g.active.Load(), heads: headsDigestOf(heads), processed: n, asleep: true, cids: heads, height: st.MaxHeight})
	}
}

// handOff is the broadcaster go-ds-crdt reads announcements from. It
// counts an announcement delivered until go-ds-crdt, having taken it
// with Next, asks for the next one: go-ds-crdt handles one at a time
// (MultiHeadProcessing is off), walking each head's branch down to what
// it merged before. A replica closed in the middle of that walk (put to
// sleep while no announcement was queued, its job queue was momentarily
// empty and no block was being fetched) dropped the walk's remaining
// jobs without marking itself dirty, leaving the branch's top marked
// processed and never recorded as a head: every later push of it was
// then taken for merged (Group.deliver, for a sleeping group) and ignored.
type handOff struct {
	*broadcaster
	// given counts the announcements queued (Group.deliver), done those
	// go-ds-crdt finished with.
	given, done atomic.Int64
	took        bool // Next returned one (only go-ds-crdt's handleNext calls Next)
	// seed keeps local commits off the merge of a replica's first heads
	// (seed.go).
	seed *seedGate
}

// Next ends the merge of the previous announcement and returns the next.
func (h *handOff) Next(ctx context.Context) ([]byte, error) {
	if h.took {
		h.took = false
		h.seed.merged()
		h.done.Add(1)
	}
	data, err := h.broadcaster.Next(ctx)
	if err == nil {
		// Taken, and counted given: the replica stays at work while this
		// waits for a commit into an empty replica.
		err = h.seed.merging(ctx)
	}
	h.took = err == nil
	return data, err
}

// deliver queues an announcement (see broadcaster.deliver).
func (h *handOff) deliver(ctx context.Context, data []byte, wait time.Duration) bool {
	h.given.Add(1)
	if !h.broadcaster.deliver(ctx, data, wait) {
		h.given.Add(-1)
		return false
	}
	return true
}

// unfinished reports whether an announcement is queued or being merged.
func (h *handOff) unfinished() bool { return h.given.Load() != h.done.Load() }

// shut closes the group for good (the manager closes or leaves it).
func (g *Group) shut() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	if g.rep == nil {
		return nil
	}
	err := g.rep.close()
	g.rep = nil
	g.dropAwakeState()
	return err
}

// dropAwakeState forgets what only an open replica needs (the block
// metadata cache, the heads' sources, the blockstore view) and frees the
// replica's slot. Called with g.mu held, the replica closed.
func (g *Group) dropAwakeState() {
	g.metas.disable()
	g.sources.forget()
	g.view.Store(nil)
	g.m.awake.release(g)
}

// repairRun repairs the replica while it is marked dirty (or a repair
// was forced), then ends: it runs when kicked (a member connected, a
// fetch failed, anti-entropy found a difference, the manager's periodic
// check, the open of a replica left dirty). A failed repair (members
// still unreachable) is retried after repairRetry, doubling up to
// RepairInterval, until one succeeds or the replica closes. One runs at
// a time per replica; a kick during a run makes it check once more.
func (r *replica) repairRun() {
	defer r.repairs.Done()
	g, ctx := r.g, r.ctx
	retry := repairRetry
	for {
		r.again.Store(false)
		select {
		case <-r.kick: // this check answers it
		default:
		}
		if r.forced.Swap(false) || r.store.IsDirty(ctx) {
			g.touch()
			start := time.Now()
			err := r.store.Repair(ctx)
			switch {
			case ctx.Err() != nil:
				r.repairing.Store(false)
				return
			case err != nil:
				g.m.metrics.repairFailures.Inc()
				g.m.log.Warn("repair failed; retrying", "group", g.name, "in", retry, "err", err)
				t := time.NewTimer(retry)
				select {
				case <-ctx.Done():
					t.Stop()
					r.repairing.Store(false)
					return
				case <-r.kick:
					t.Stop()
				case <-t.C:
				}
				retry = min(2*retry, g.m.cfg.RepairInterval)
				continue
			default:
				g.m.metrics.repairs.Inc()
				g.m.log.Info("repaired group", "group", g.name, "took", time.Since(start))
				retry = repairRetry
			}
		}
		if r.again.Load() {
			continue
		}
		r.repairing.Store(false)
		// A kick between the check above and the store: this goroutine
		// runs it unless the kick started another.
		if !r.again.Load() || !r.repairing.CompareAndSwap(false, true) {
			return
		}
	}
}

// repairRetry is how soon a group whose blocks could not all be fetched
// checks for repair: a fetch cut by a partition (or failing because the
// member had not reconnected yet) marks the replica dirty, and nothing
// else would look at it before RepairInterval (seen: 30 s with catalogs
// disagreeing after a cut in the middle of concurrent writes).
const repairRetry = 500 * time.Millisecond

// repairSoon asks for a dirty check shortly: go-ds-crdt marks the replica
// dirty after the failed fetch that calls this returns.
func (g *Group) repairSoon() {
	time.AfterFunc(repairRetry, g.kickRepair)
}

// forceRepair asks for a repair now, dirty mark or not: go-ds-crdt's
// repair walks the whole DAG and merges every node not merged yet. It
// wakes a sleeping group.
func (g *Group) forceRepair(ctx context.Context) {
	r, done, _, err := g.use(ctx)
	if err != nil {
		return
	}
	defer done()
	r.forced.Store(true)
	g.mu.Lock()
	defer g.mu.Unlock()
	r.kickNow()
}

// kickRepair asks for a check of the dirty mark now; a sleeping group is
// not dirty (it sleeps only when clean) and stays asleep.
func (g *Group) kickRepair() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rep != nil {
		g.rep.kickNow()
	}
}

// wakeDirty wakes a group left asleep with a repair due (sleptDirty), so
// that it is repaired (wake kicks the repair), if a slot is free or a
// clean idle replica can give up its own: never another repair's (dirty
// groups would put each other to sleep in turn, none finishing). The
// next periodic check or connection tries again.
func (g *Group) wakeDirty() {
	if !g.sleptDirty.Load() {
		return
	}
	if _, done, _, err := g.wake(g.m.ctx, slotRepair, wakeRepair); err == nil {
		done()
	}
}

// kickNow starts a repair check unless one runs (it then checks once
// more). Called with the group's mutex held: close cancels the replica's
// context and waits for its repair under that mutex, so no repair starts
// once it waits.
func (r *replica) kickNow() {
	r.again.Store(true)
	if r.ctx.Err() != nil {
		return
	}
	if !r.repairing.CompareAndSwap(false, true) {
		select {
		case r.kick <- struct{}{}:
		default:
		}
		return
	}
	r.repairs.Add(1)
	go r.repairRun()
}

// connectedMembers lists the members (not this site) with a live connection.
func (g *Group) connectedMembers() []peer.ID {
	var out []peer.ID
	for _, p := range g.peers {
		if p != g.m.cfg.Host.ID() && g.m.cfg.Host.Network().Connectedness(p) == network.Connected {
			out = append(out, p)
		}
	}
	return out
}

// knownHeads are the group's heads: the replica's while it is open, the
// ones it stored while it sleeps (as its digest keeps them, if it does).
func (g *Group) knownHeads(ctx context.Context) []cid.Cid {
	if r := g.awake(); r != nil {
		return r.store.InternalStats(ctx).Heads
	}
	if heads, ok := g.sleepingHeads(); ok {
		return slices.Clone(heads)
	}
	heads, _, _ := g.storedHeads(ctx)
	return heads
}

// storedHeads reads the heads go-ds-crdt v0.6 keeps under its "h"
// namespace (key: the head's CID, value: its height as a uvarint), and
// the greatest height. On an error, what was read before it.
func (g *Group) storedHeads(ctx context.Context) ([]cid.Cid, uint64, error) {
	prefix := g.crdtPrefix().ChildString(headsNamespace).String()
	res, err := g.m.cfg.Datastore.Query(ctx, query.Query{Prefix: prefix})
	if err != nil {
		return nil, 0, fmt.Errorf("read the heads of {%s}: %w", g.name, err)
	}
	defer res.Close()
	var heads []cid.Cid
	var height uint64
	for r := range res.Next() {
		if r.Error != nil {
			return heads, height, fmt.Errorf("read the heads of {%s}: %w", g.name, r.Error)
		}
		c, err := dshelp.DsKeyToCidV1(ds.NewKey(strings.TrimPrefix(r.Key, prefix)), cid.DagProtobuf)
		if err != nil {
			continue
		}
		heads = append(heads, c)
		if h, n := binary.Uvarint(r.Value); n > 0 && h > height {
			height = h
		}
	}
	return heads, height, nil
}

// groupStats is what operators and metrics see of a group's replica.
type groupStats struct {
	heads  []cid.Cid
	height uint64
	queued int
	dirty  bool
	asleep bool
}

// stats reads the replica's figures; a sleeping group's are those its
// digest keeps (read from the datastore once per sleep at most, as
// anti-entropy reads them): a scrape of a site in thousands of groups
// reads none of them from the datastore. heads is not to be modified.
func (g *Group) stats(ctx context.Context) groupStats {
	for range 3 {
		if r := g.awake(); r != nil {
			st := r.store.InternalStats(ctx)
			return groupStats{heads: st.Heads, height: st.MaxHeight, queued: st.QueuedJobs, dirty: r.store.IsDirty(ctx)}
		}
		if d := g.digest(ctx); d.asleep {
			return groupStats{heads: d.cids, height: d.height, dirty: g.dirty(ctx), asleep: true}
		}
		// Woken while its digest was read: read it awake.
	}
	heads, height, _ := g.storedHeads(ctx)
	return groupStats{heads: heads, height: height, dirty: g.dirty(ctx), asleep: true}
}

// deliver hands heads a member sent to the replica, waking the group;
// false when they were dropped (the queue stayed full for wait). A link's
// reader (waiter false) only takes a free slot: a sleeping group that
// finds none keeps the heads for the manager's waker, which calls with
// waiter set and may put an idle replica to sleep or wait for a slot
// with ctx. The reader thus never waits for a slot, nor reads or closes
// another group's replica.
//
// cause says what brings the heads, for the wakes counter.
func (g *Group) deliver(ctx context.Context, heads []byte, wait time.Duration, waiter bool, cause string) (bool, error) {
	cids, ok := decodeHeads(heads)
	var orphan, marked bool
	if ok {
		orphan, marked = g.orphaned(ctx, cids)
	}
	if orphan && g.rewalkLater(heads) {
		// The rewalk delivers the heads once the marks are forgotten.
		return true, nil
	}
	if ok && marked && g.heldBelow(ctx, cids) {
		// One of this site's heads is below the member's (frontier.go):
		// the heads are checked once the replica is idle.
		g.checkFrontierLater()
	}
	// Every head merged already (orphaned read the marks; reading them
	// again was ~1 % of the CPU of 100 sites × 20,000 writes).
	if ok && g.awake() == nil && marked {
		// Nothing new for a sleeping group (a repeated push, a member's
		// late announcement): it stays asleep.
		return true, nil
	}
	mode := slotFree
	if waiter {
		mode = slotAny
	}
	r, done, _, err := g.wake(ctx, mode, cause)
	if errors.Is(err, errNoSlot) {
		g.m.deferHeads(g, cids)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer done()
	if earlier := g.deferred.take(); earlier != nil {
		r.inHand.deliver(ctx, earlier, 0)
	}
	return r.inHand.deliver(ctx, heads, wait), nil
}

// decodeHeads decodes an announcement's heads; false when it cannot be
// decoded or names none (it is then handed to go-ds-crdt as it came).
func decodeHeads(data []byte) ([]cid.Cid, bool) {
	var msg pb.CRDTBroadcast
	if err := proto.Unmarshal(data, &msg); err != nil || len(msg.GetHeads()) == 0 {
		return nil, false
	}
	out := make([]cid.Cid, 0, len(msg.GetHeads()))
	for _, h := range msg.GetHeads() {
		c, err := cid.Cast(h.GetCid())
		if err != nil {
			return nil, false
		}
		out = append(out, c)
	}
	return out, true
}

// encodeHeads encodes heads as go-ds-crdt broadcasts them.
func encodeHeads(heads []cid.Cid) ([]byte, error) {
	msg := &pb.CRDTBroadcast{}
	for _, h := range heads {
		msg.Heads = append(msg.Heads, &pb.Head{Cid: h.Bytes()})
	}
	data, err := proto.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode heads: %w", err)
	}
	return data, nil
}

// processedKey is where go-ds-crdt marks block c merged in this group.
// Read at every announced head (orphaned, frontierCheck): built as one
// string (a clean key, like the multihash's), where ChildString cleaned
// the path at each of its three steps (1.9 % of the bytes allocated at
// 100 sites × 40,000 resources).
func (g *Group) processedKey(c cid.Cid) ds.Key {
	return ds.RawKey(g.crdtPrefix().String() + "/" + processedNamespace + dshelp.MultihashToDsKey(c.Hash()).String())
}

// dirty reports whether go-ds-crdt marked the replica dirty (read from
// the datastore: it works while the group sleeps).
func (g *Group) dirty(ctx context.Context) bool {
	ok, err := g.dirtyMark.has(ctx, g.m.cfg.Datastore, g.dirtyKey())
	return err == nil && ok
}

// dirtyKey is the key of go-ds-crdt's dirty mark for the group.
func (g *Group) dirtyKey() ds.Key { return g.crdtPrefix().ChildString(dirtyKey) }

// encodedHeads encodes the group's heads as go-ds-crdt broadcasts them;
// nil when the group has none.
func (g *Group) encodedHeads(ctx context.Context) ([]byte, error) {
	heads := g.knownHeads(ctx)
	if len(heads) == 0 {
		return nil, nil
	}
	return encodeHeads(heads)
}

// Namespaces and keys of go-ds-crdt v0.6 under a replica's namespace:
// where it marks the blocks it has merged, keeps its heads, and marks
// itself dirty.
const (
	processedNamespace = "b"
	headsNamespace     = "h"
	dirtyKey           = "d"
)

// go-ds-crdt v0.6 records its storage format under formatKey as the
// uvarint of the format plus one; crdtFormat is the current one (a
// replica found without it is migrated from format 0 when opened).
const (
	formatKey  = "crdt_version"
	crdtFormat = 1
)

// forgetProcessed deletes every processed-block mark under prefix.
func forgetProcessed(ctx context.Context, store ds.Batching, prefix ds.Key) error {
	res, err := store.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: true})
	if err != nil {
		return fmt.Errorf("list processed marks: %w", err)
	}
	defer res.Close()
	batch, err := store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("forget processed marks: %w", err)
	}
	for r := range res.Next() {
		if r.Error != nil {
			return fmt.Errorf("list processed marks: %w", r.Error)
		}
		if err := batch.Delete(ctx, ds.NewKey(r.Key)); err != nil {
			return fmt.Errorf("forget processed mark: %w", err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("forget processed marks: %w", err)
	}
	return nil
}
