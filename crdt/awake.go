package crdt

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
)

// A site keeps at most Config.MaxAwake replicas open at once. Every
// write, and every announcement for a group whose heads it has not
// merged, needs its group's replica; without a bound, a burst of writes
// into many groups opened a replica at every member for each (at 100
// in-process sites × 50,000 writes, ~30,000 replicas awake at once and
// 243,000 goroutines: the scheduler fell seconds behind and yamux's
// keepalives closed the connections).
//
// Waking a group takes a slot. When none is free, the least recently
// used replica that is idle now (no caller holds it, no announcement is
// queued or being merged, no job queued, no block being fetched) is put
// to sleep and its slot taken; when none is idle, the caller waits for
// one with its context.
//
// No deadlock: a caller waits for a slot holding no group's mutex and no
// slot, and what an open replica needs to become idle never needs a
// slot: its merges need blocks (the block server reads the blockstore,
// awake or not) and its announcements a link, whose reader only takes a
// free slot, never waiting nor putting a replica to sleep (an
// announcement for a sleeping group that finds no free slot is deferred:
// its heads are kept and handed over by the manager's waker, which may
// evict, see deferHeads).

// awakeSet counts the slots taken and lists the groups holding them.
type awakeSet struct {
	mu    sync.Mutex
	n     int // slots taken: replicas open or being opened
	peak  int // the most n has been
	open  map[*Group]struct{}
	freed chan struct{} // closed and replaced when a slot may have come free
}

func newAwakeSet() *awakeSet {
	return &awakeSet{open: map[*Group]struct{}{}, freed: make(chan struct{})}
}

// slotPoll bounds a wait for a slot between two looks at the open
// replicas: a replica becomes idle when its merge ends, which signals
// nothing here.
const slotPoll = 10 * time.Millisecond

// take takes a slot if one is free.
func (s *awakeSet) take(limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= limit {
		return false
	}
	s.n++
	s.peak = max(s.peak, s.n)
	return true
}

// release gives back a slot: g's replica closed (g non-nil), or a slot
// taken was not used (nil: the open failed, or another caller woke the
// group meanwhile).
func (s *awakeSet) release(g *Group) {
	s.mu.Lock()
	s.n--
	if g != nil {
		delete(s.open, g)
	}
	close(s.freed)
	s.freed = make(chan struct{})
	s.mu.Unlock()
}

// opened records that g's replica holds a slot.
func (s *awakeSet) opened(g *Group) {
	s.mu.Lock()
	s.open[g] = struct{}{}
	s.mu.Unlock()
}

// signal wakes the waiters: a replica may have become idle.
func (s *awakeSet) signal() {
	s.mu.Lock()
	close(s.freed)
	s.freed = make(chan struct{})
	s.mu.Unlock()
}

// candidates lists the open groups, least recently used first, and the
// channel closed at the next change. The groups' last use is read once,
// before sorting: it changes while they work.
func (s *awakeSet) candidates() ([]*Group, <-chan struct{}) {
	type entry struct {
		g      *Group
		active int64
	}
	s.mu.Lock()
	entries := make([]entry, 0, len(s.open))
	for g := range s.open {
		entries = append(entries, entry{g, g.active.Load()})
	}
	freed := s.freed
	s.mu.Unlock()
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.active, b.active) })
	out := make([]*Group, len(entries))
	for i, e := range entries {
		out[i] = e.g
	}
	return out, freed
}

// slotMode says what acquire may do to get a slot besides taking a free
// one.
type slotMode uint8

const (
	// evictClean: put an idle replica that is not marked dirty to sleep.
	evictClean slotMode = 1 << iota
	// evictDirty: put an idle replica marked dirty (or being repaired)
	// to sleep; it is repaired when it wakes.
	evictDirty
	// waitSlot: wait, with the caller's context, while no slot can be
	// had.
	waitSlot

	// slotFree only takes a free slot: a link's reader, which must not
	// block on, or close, another group's replica (its announcement is
	// deferred to the waker instead).
	slotFree slotMode = 0
	// slotRepair frees a slot only from a clean replica, without
	// waiting: waking a dirty group for its repair must not put another
	// group's repair to sleep (wakeDirty).
	slotRepair = evictClean
	// slotAny is a caller that needs the replica (a write, a read, the
	// waker): any idle replica may go, and it waits.
	slotAny = evictClean | evictDirty | waitSlot
)

// acquire takes a slot for a group about to wake. When none is free it
// puts the least recently used idle replica to sleep, as mode allows,
// and, when none can go, waits (until ctx or the manager ends) if mode
// has waitSlot, or returns errNoSlot. The caller holds no group's mutex.
//
// A clean idle replica is put to sleep before a dirty one (waiting for
// a repair that fails while a member is away): dirty replicas holding
// every slot would otherwise stop the site's writes for as long as a
// partition lasts. A dirty group put to sleep is repaired when it wakes
// (sleptDirty).
func (m *Manager) acquire(ctx context.Context, mode slotMode) error {
	s := m.awake
	for {
		if s.take(m.cfg.MaxAwake) {
			return nil
		}
		var freed <-chan struct{}
		if mode&(evictClean|evictDirty) != 0 {
			var groups []*Group
			groups, freed = s.candidates()
			if mode&evictClean != 0 && m.evictOne(ctx, groups, false) ||
				mode&evictDirty != 0 && m.evictOne(ctx, groups, true) {
				continue
			}
		} else {
			s.mu.Lock()
			freed = s.freed
			s.mu.Unlock()
		}
		if mode&waitSlot == 0 {
			return errNoSlot
		}
		t := time.NewTimer(slotPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-m.ctx.Done():
			t.Stop()
			return ErrClosed
		case <-freed:
		case <-t.C:
		}
		t.Stop()
	}
}

// evictOne puts the first idle replica of groups to sleep (dirty ones
// too if dirty is set).
func (m *Manager) evictOne(ctx context.Context, groups []*Group, dirty bool) bool {
	for _, h := range groups {
		if h.evict(ctx, dirty) {
			m.metrics.evictions.Inc()
			return true
		}
	}
	return false
}

// errNoSlot: every slot is held by a replica at work (acquire without
// waiting).
var errNoSlot = errors.New("crdt: no replica slot free")

// AwakePeak is the most replicas this site has had open at once.
func (m *Manager) AwakePeak() int {
	m.awake.mu.Lock()
	defer m.awake.mu.Unlock()
	return m.awake.peak
}

// deferredHeads are the heads of announcements a sleeping group received
// while no slot was free, waiting for the waker to hand them to its
// replica: a union of CIDs, at most maxDeferredHeads (past that the
// oldest are dropped, as a full replica queue drops an announcement:
// anti-entropy brings the member's heads again).
type deferredHeads struct {
	mu    sync.Mutex
	heads []cid.Cid
}

const maxDeferredHeads = 64

// add keeps heads; false if there are none.
func (d *deferredHeads) add(heads []cid.Cid) bool {
	if len(heads) == 0 {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range heads {
		if !slices.Contains(d.heads, c) {
			d.heads = append(d.heads, c)
		}
	}
	if over := len(d.heads) - maxDeferredHeads; over > 0 {
		d.heads = slices.Delete(d.heads, 0, over)
	}
	return true
}

// take returns the deferred heads as one announcement, and forgets them;
// nil when there are none.
func (d *deferredHeads) take() []byte {
	d.mu.Lock()
	heads := d.heads
	d.heads = nil
	d.mu.Unlock()
	if len(heads) == 0 {
		return nil
	}
	data, err := encodeHeads(heads)
	if err != nil {
		return nil
	}
	return data
}

// deferHeads keeps the heads of an announcement for a sleeping group
// that found no free slot, and queues the group for the waker.
func (m *Manager) deferHeads(g *Group, heads []cid.Cid) {
	if !g.deferred.add(heads) {
		return
	}
	m.metrics.deferred.Inc()
	m.waitMu.Lock()
	if !g.waiting {
		g.waiting = true
		m.waiting = append(m.waiting, g)
	}
	m.waitMu.Unlock()
	select {
	case m.wakeup <- struct{}{}:
	default:
	}
}

// wakerLoop hands deferred heads to their groups' replicas, waking each
// group when a slot is free, in the order they were deferred.
func (m *Manager) wakerLoop() {
	defer m.wg.Done()
	for {
		m.waitMu.Lock()
		var g *Group
		if len(m.waiting) > 0 {
			g = m.waiting[0]
			m.waiting[0] = nil
			m.waiting = m.waiting[1:]
			g.waiting = false
		}
		m.waitMu.Unlock()
		if g == nil {
			select {
			case <-m.ctx.Done():
				return
			case <-m.wakeup:
				continue
			}
		}
		heads := g.deferred.take()
		if heads == nil {
			continue
		}
		if _, err := g.deliver(m.ctx, heads, 0, true, wakeDeferred); err != nil && m.ctx.Err() != nil {
			return
		}
	}
}

// repairDue wakes, one after the other, the groups left asleep at
// startup with a repair due (sleptDirty), each as soon as a slot is
// free or a clean idle replica can give up its own: never another
// repair's, which would then have to start over. A repair that cannot
// finish (a member unreachable) holds its slot; a repair put to sleep
// for a write's or a merge's slot (evict) is woken again by the periodic
// check or a member's connection (wakeDirty).
func (m *Manager) repairDue() {
	defer m.wg.Done()
	for _, g := range m.Groups() {
		if !g.sleptDirty.Load() {
			continue
		}
		_, done, _, err := g.wake(m.ctx, slotRepair|waitSlot, wakeRepair)
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			continue
		}
		done()
	}
}
