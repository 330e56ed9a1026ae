package crdt

import (
	"context"
	"sync"
	"sync/atomic"

	ds "github.com/ipfs/go-datastore"
)

// dirtyMark keeps whether a group's datastore holds go-ds-crdt's dirty
// mark, once read, so that asking costs no datastore read. go-ds-crdt
// asks in New, in Close, and the group before it sleeps (idleLocked):
// three pebble reads of a key that is almost never there per wake, each
// a seek in the memtable's skiplist, were 2.5 % of the CPU of 100 sites ×
// 40,000 writes (a group wakes ~2 times per write there).
//
// It is exact as long as the mark changes only through the group (its
// replica's store, countingStore, and forgetMerged): each change is
// recorded once the datastore took it, changes one at a time (the
// manager's dirtyMu: they are rare), and a change that failed leaves it
// unknown. A read from the datastore is kept only if no change was
// recorded meanwhile. A process starts with every mark unknown. Four
// bytes: it fits in padding the Group already had.
type dirtyMark struct {
	state atomic.Int32 // markUnknown, markClear or markSet
}

const (
	markUnknown int32 = iota
	markClear
	markSet
)

func markState(set bool) int32 {
	if set {
		return markSet
	}
	return markClear
}

// has reports whether the mark is there, reading store if not known.
func (d *dirtyMark) has(ctx context.Context, store ds.Read, key ds.Key) (bool, error) {
	switch d.state.Load() {
	case markClear:
		return false, nil
	case markSet:
		return true, nil
	}
	ok, err := store.Has(ctx, key)
	if err == nil {
		d.state.CompareAndSwap(markUnknown, markState(ok))
	}
	return ok, err
}

// change runs write, which sets (set) or removes the mark, under mu,
// and records the result.
func (d *dirtyMark) change(mu *sync.Mutex, set bool, write func() error) error {
	mu.Lock()
	defer mu.Unlock()
	err := write()
	if err != nil {
		d.state.Store(markUnknown)
	} else {
		d.state.Store(markState(set))
	}
	return err
}
