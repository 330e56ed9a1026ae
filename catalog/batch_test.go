package catalog

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
)

// batchMemStore is a memStore whose batch watchers receive what the
// store reported only when flush is called, as one batch: a store like
// *crdt.Manager, which reports the changes of a merge together.
type batchMemStore struct {
	*memStore
	mu      sync.Mutex
	fns     []func([][]string, []string, [][]byte, []bool)
	sites   [][]string
	keys    []string
	values  [][]byte
	deleted []bool
}

func newBatchMemStore(s *memStore) *batchMemStore {
	b := &batchMemStore{memStore: s}
	s.Watch(func(sites []string, key string, value []byte, deleted bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.sites, b.keys, b.values, b.deleted = append(b.sites, sites), append(b.keys, key), append(b.values, value), append(b.deleted, deleted)
	})
	return b
}

func (b *batchMemStore) WatchBatch(fn func([][]string, []string, [][]byte, []bool)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fns = append(b.fns, fn)
	return func() {}
}

// flush delivers what the store reported since the last flush as one
// batch; it reports how many changes.
func (b *batchMemStore) flush() int {
	b.mu.Lock()
	sites, keys, values, deleted, fns := b.sites, b.keys, b.values, b.deleted, slices.Clone(b.fns)
	b.sites, b.keys, b.values, b.deleted = nil, nil, nil, nil
	b.mu.Unlock()
	for _, fn := range fns {
		fn(sites, keys, values, deleted)
	}
	return len(keys)
}

// A catalog folding the store's changes in batches (one lock per batch)
// ends with the view of one folding them one by one: creates, operations,
// site records, this site's own writes reported back, a malformed value
// and a deletion in the middle of a batch.
func TestBatchedChangesFoldLikeSingleOnes(t *testing.T) {
	ctx := context.Background()
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	bs := newBatchMemStore(net.store("b"))
	batched := newTestCatalog(t, bs, "b")
	single := newTestCatalog(t, net.store("b"), "b")
	ab := []string{"a", "b"}

	var ids []string
	for range 5 {
		ids = append(ids, create(t, a, "posts", ab, map[string]string{"a": "1"}, "b"))
	}
	for i, id := range ids {
		if err := a.AppendOp(ctx, Operation{Resource: id, Method: "PATCH", Path: "/posts/1", Outcomes: map[string]string{"a": "200", "b": OutcomePending}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			// b's own write: applied at once, then reported back.
			if err := single.RecordOutcomes(ctx, []Outcome{{Resource: id, Op: "x", Applied: "200"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := batched.Get(ctx, ids[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the batched catalog holds %s before its batch came: %v (the batch path is not used)", ids[0], err)
	}
	// A malformed value in the middle of the batch, then the deletion of
	// an operation: both catalogs skip the first and drop the second.
	if err := net.store("a").Put(ctx, ab, opKey(ids[1], "bogus"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	r, err := a.Get(ctx, ids[2])
	if err != nil {
		t.Fatal(err)
	}
	gone := r.Operations[len(r.Operations)-1].ID
	if err := net.store("a").Delete(ctx, ab, opKey(ids[2], gone)); err != nil {
		t.Fatal(err)
	}
	if n := bs.flush(); n < 20 {
		t.Fatalf("one batch of %d changes; want every change of the test", n)
	}
	for _, id := range ids {
		want, err := view(single, id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := view(batched, id)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%s folded in one batch:\n%s\none by one:\n%s", id, got, want)
		}
	}
	r, _ = batched.Get(ctx, ids[2])
	for _, op := range r.Operations {
		if op.ID == gone {
			t.Fatalf("operation %s deleted in the batch is still in the view", gone)
		}
	}
}
