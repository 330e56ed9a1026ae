package crdt

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// Group commit: the writes that callers make concurrently into one group
// are applied as one go-ds-crdt batch (one delta, one DAG node, one
// announcement per member), and each caller returns once the batch that
// holds its write is committed. go-ds-crdt publishes one delta at a time
// per replica (its delta lock covers building the node, merging it and
// announcing it), so concurrent writers into a group used to wait for
// each other's whole publish; now they share one.
//
// The write that finds the group idle commits whatever is queued with
// it; what is queued meanwhile is committed by a goroutine that starts
// over until the queue is empty: a lone write commits on its caller's
// goroutine and waits for no one, and a group with no writes keeps no
// goroutine.

// A burst's first write may wait a little for company: when callers
// announced writes into the group that have not arrived yet (Expect: a
// replicated write announces its catalog record when it starts, and
// arrives once its replicas answered), the commit waits for them, up to
// Config.CommitLinger, polling every lingerPoll. Concurrent writers then
// share one delta instead of committing one after the other, each alone,
// a few hundred microseconds apart. A write nobody announced besides it
// (a lone writer, a client waiting for each answer) never waits.
const lingerPoll = 250 * time.Microsecond

// Bounds of one commit: what is queued beyond them waits for the next
// one. 128 KiB of keys and values keeps the delta's block within what an
// announcement carries inline (Config.MaxInlineBytes, 256 KiB by
// default) and far below go-ds-crdt's MaxBatchDeltaSize (1 MiB).
const (
	maxCommitWrites = 1024
	maxCommitBytes  = 128 << 10
)

// commits queues a group's pending writes.
type commits struct {
	mu      sync.Mutex
	queue   []*pendingWrite
	running bool // a goroutine is committing the queue
}

// pendingWrite is one caller's Put or PutBatch, waiting for its commit.
type pendingWrite struct {
	ctx    context.Context
	keys   []string
	values [][]byte
	done   chan error // receives the commit's outcome (buffered)
}

func (w *pendingWrite) size() int {
	n := 0
	for i, k := range w.keys {
		n += len(k) + len(w.values[i])
	}
	return n
}

// write applies keys in the group with the writes queued at the same
// time, and returns once they are committed (applied locally and
// announced to the connected members). An error means the write was
// not applied: cancelling ctx while the write is queued (the commit
// before it runs, or the group waits for a replica slot) takes it off
// the queue and returns ctx.Err() at once; once a commit holding the
// group's replica has taken it, write returns that commit's result.
func (g *Group) write(ctx context.Context, keys []string, values [][]byte) error {
	w := &pendingWrite{ctx: ctx, keys: keys, values: values, done: make(chan error, 1)}
	c := &g.commits
	c.mu.Lock()
	c.queue = append(c.queue, w)
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		// This write found the group idle: it commits what is queued
		// (its own write at least) on its own goroutine, and leaves the
		// rest, if any, to another.
		if !g.m.enter() {
			g.fail(ErrClosed)
		} else {
			g.linger(ctx)
			g.commitLoop(ctx, true)
		}
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		if c.remove(w) {
			return ctx.Err()
		}
		// Taken by a commit: it reports whether it applied the write.
		return <-w.done
	}
}

// remove takes w off the queue; false if a commit took it already.
func (c *commits) remove(w *pendingWrite) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.queue, w)
	if i < 0 {
		return false
	}
	c.queue = slices.Delete(c.queue, i, i+1)
	return true
}

// Expect announces a write into the group of sites that its caller will
// make soon (Put, PutBatch), and returns the function to call when it
// comes to make it, or gives up (once; more calls do nothing). Until
// then a commit into the group waits for it (Config.CommitLinger).
func (m *Manager) Expect(sites []string) (arrived func()) {
	name, _, err := groupName(sites)
	if err != nil || m.cfg.CommitLinger <= 0 {
		return func() {}
	}
	v, _ := m.expected.LoadOrStore(name, new(atomic.Int64))
	n := v.(*atomic.Int64)
	n.Add(1)
	var once sync.Once
	return func() { once.Do(func() { n.Add(-1) }) }
}

// linger waits, at most Config.CommitLinger, while writes announced into
// the group have not arrived and the queue holds less than a commit.
func (g *Group) linger(ctx context.Context) {
	v, ok := g.m.expected.Load(g.name)
	if !ok || v.(*atomic.Int64).Load() <= 0 {
		return
	}
	n := v.(*atomic.Int64)
	deadline := time.Now().Add(g.m.cfg.CommitLinger)
	t := time.NewTimer(lingerPoll)
	defer t.Stop()
	for n.Load() > 0 && !g.commits.full() {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		t.Reset(min(left, lingerPoll))
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		case <-g.m.ctx.Done():
			return
		}
	}
}

// full reports whether the queue holds a whole commit.
func (c *commits) full() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) >= maxCommitWrites
}

// fail ends every queued write with err.
func (g *Group) fail(err error) {
	c := &g.commits
	c.mu.Lock()
	queue := c.queue
	c.queue, c.running = nil, false
	c.mu.Unlock()
	for _, w := range queue {
		w.done <- err
	}
}

// commitLoop commits the queue, a batch at a time, until it is empty.
// The first write of a burst runs it with once set: it commits one batch
// and hands what was queued meanwhile to a goroutine, so that no caller
// waits for more than one commit besides its own.
//
// The replica is taken before the batch: a write whose caller gives up
// while the group waits for a slot is still queued, and leaves it. The
// first write waits for the slot with its own ctx (ctx; the manager's
// otherwise): if it gives up, a goroutine waits on for the rest.
func (g *Group) commitLoop(ctx context.Context, once bool) {
	for {
		if g.commits.drained() {
			// Every queued caller gave up: no replica to wake.
			g.m.wg.Done()
			return
		}
		r, done, _, err := g.wake(ctx, slotAny, wakeWrite)
		if err != nil && once && ctx.Err() != nil && g.m.ctx.Err() == nil {
			go g.commitLoop(g.m.ctx, false)
			return
		}
		batch := g.nextBatch()
		if len(batch) == 0 {
			if err == nil {
				done()
			}
			g.m.wg.Done()
			return
		}
		if err == nil {
			err = g.commit(r, batch)
			done()
		}
		for _, w := range batch {
			w.done <- err
		}
		if once {
			c := &g.commits
			c.mu.Lock()
			more := len(c.queue) > 0
			c.running = more
			c.mu.Unlock()
			if more {
				go g.commitLoop(g.m.ctx, false)
			} else {
				g.m.wg.Done()
			}
			return
		}
	}
}

// drained ends the loop if the queue is empty (see nextBatch).
func (c *commits) drained() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) > 0 {
		return false
	}
	c.queue, c.running = nil, false
	return true
}

// nextBatch takes the writes of the next commit off the queue, leaving
// out those whose caller gave up; none when the queue is empty (the loop
// then ends, and the next write starts another).
func (g *Group) nextBatch() []*pendingWrite {
	c := &g.commits
	c.mu.Lock()
	defer c.mu.Unlock()
	var batch []*pendingWrite
	n, bytes := 0, 0
	for len(c.queue) > 0 {
		w := c.queue[0]
		if w.ctx.Err() != nil {
			c.queue = c.queue[1:]
			w.done <- w.ctx.Err()
			continue
		}
		size := w.size()
		if len(batch) > 0 && (n+len(w.keys) > maxCommitWrites || bytes+size > maxCommitBytes) {
			break
		}
		c.queue[0] = nil
		c.queue = c.queue[1:]
		batch = append(batch, w)
		n, bytes = n+len(w.keys), bytes+size
	}
	if len(batch) == 0 {
		c.queue, c.running = nil, false
	}
	return batch
}

// commit applies the writes as one go-ds-crdt batch. A key written by
// several of them takes the value of the last queued, as if they had
// been committed one after the other.
func (g *Group) commit(r *replica, batch []*pendingWrite) error {
	ctx := g.m.ctx
	last := map[string]int{} // key → its index in order
	var order []string
	var values [][]byte
	for _, w := range batch {
		for i, k := range w.keys {
			if j, ok := last[k]; ok {
				values[j] = w.values[i]
				continue
			}
			last[k] = len(order)
			order = append(order, k)
			values = append(values, w.values[i])
		}
	}
	// A replica with no heads yet may be merging its first: the commit
	// waits for that walk to end (seed.go), or for the replica to close.
	seeded, err := r.inHand.seed.committing(r.ctx, g.m.metrics.seedWaits)
	if err != nil {
		return fmt.Errorf("wait for the first heads' merge: %w", err)
	}
	defer seeded()
	b, err := r.store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("start a batch: %w", err)
	}
	for i, k := range order {
		if err := b.Put(ctx, ds.NewKey(k), values[i]); err != nil {
			return fmt.Errorf("batch put %s: %w", k, err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	g.announcedNow()
	g.m.metrics.commits.Inc()
	g.m.metrics.committedWrites.Add(float64(len(batch)))
	return nil
}
