package crdt

import (
	"sync"
	"time"
)

// change is one key written or deleted in a group.
type change struct {
	sites   []string
	key     string
	value   []byte
	deleted bool
	at      time.Time // when the store reported it
}

// changeQueue decouples go-ds-crdt's hooks, which run inside its merge
// batch and must not block, from the watchers: add never blocks, and one
// goroutine delivers changes in order, one by one to the watchers of
// single changes and as the batches it takes from the queue to the
// watchers of batches.
type changeQueue struct {
	mu       sync.Mutex
	pending  []change
	signal   chan struct{}
	done     chan struct{}
	watchers map[int]func(sites []string, key string, value []byte, deleted bool)
	batches  map[int]batchWatcher
	nextID   int
	once     sync.Once
}

// batchWatcher receives changes in batches (Manager.WatchBatch).
type batchWatcher = func(sites [][]string, keys []string, values [][]byte, deleted []bool)

func newChangeQueue() *changeQueue {
	return &changeQueue{signal: make(chan struct{}, 1), done: make(chan struct{}),
		watchers: map[int]func([]string, string, []byte, bool){}, batches: map[int]batchWatcher{}}
}

func (q *changeQueue) add(c change) {
	c.at = time.Now()
	q.mu.Lock()
	if len(q.watchers) > 0 || len(q.batches) > 0 {
		q.pending = append(q.pending, c)
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *changeQueue) watch(fn func([]string, string, []byte, bool)) func() {
	q.mu.Lock()
	id := q.nextID
	q.nextID++
	q.watchers[id] = fn
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		delete(q.watchers, id)
		q.mu.Unlock()
	}
}

func (q *changeQueue) watchBatch(fn batchWatcher) func() {
	q.mu.Lock()
	id := q.nextID
	q.nextID++
	q.batches[id] = fn
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		delete(q.batches, id)
		q.mu.Unlock()
	}
}

func (q *changeQueue) close() { q.once.Do(func() { close(q.done) }) }

func (m *Manager) deliverChanges() {
	defer m.wg.Done()
	q := m.changes
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-q.signal:
		}
		for {
			q.mu.Lock()
			batch := q.pending
			q.pending = nil
			fns := make([]func([]string, string, []byte, bool), 0, len(q.watchers))
			for _, fn := range q.watchers {
				fns = append(fns, fn)
			}
			batchFns := make([]batchWatcher, 0, len(q.batches))
			for _, fn := range q.batches {
				batchFns = append(batchFns, fn)
			}
			q.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, fn := range batchFns {
				sites, keys, values, deleted := make([][]string, len(batch)), make([]string, len(batch)), make([][]byte, len(batch)), make([]bool, len(batch))
				for i, c := range batch {
					sites[i], keys[i], values[i], deleted[i] = c.sites, c.key, c.value, c.deleted
				}
				fn(sites, keys, values, deleted)
			}
			for _, c := range batch {
				if m.metrics != nil {
					m.metrics.changeDelay.Observe(time.Since(c.at).Seconds())
				}
				for _, fn := range fns {
					fn(c.sites, c.key, c.value, c.deleted)
				}
			}
		}
	}
}
