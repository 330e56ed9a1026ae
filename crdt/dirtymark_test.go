package crdt

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	ds "github.com/ipfs/go-datastore"
)

// readCounter counts the datastore's Has calls and may hold their
// answers until released.
type readCounter struct {
	ds.Datastore
	reads   atomic.Int64
	entered chan struct{} // closed at the first Has, if set
	release chan struct{} // Has waits for it, if set
}

func (r *readCounter) Has(ctx context.Context, key ds.Key) (bool, error) {
	r.reads.Add(1)
	ok, err := r.Datastore.Has(ctx, key)
	if r.entered != nil {
		close(r.entered)
		r.entered = nil
	}
	if r.release != nil {
		<-r.release // read, not answered yet
	}
	return ok, err
}

// TestDirtyMarkIsReadOnceAndFollowsChanges: the mark is read from the
// datastore once, then answered from memory, set and cleared with the
// writes that change it; a write that failed makes it read again.
func TestDirtyMarkIsReadOnceAndFollowsChanges(t *testing.T) {
	ctx := context.Background()
	store := &readCounter{Datastore: ds.NewMapDatastore()}
	key := ds.NewKey("/g/a,b/crdt/d")
	var mu sync.Mutex
	var d dirtyMark
	check := func(want bool, reads int64) {
		t.Helper()
		got, err := d.has(ctx, store, key)
		if err != nil || got != want {
			t.Fatalf("has = %v, %v; want %v", got, err, want)
		}
		if n := store.reads.Load(); n != reads {
			t.Fatalf("%d datastore reads, want %d", n, reads)
		}
	}
	check(false, 1)
	check(false, 1)
	if err := d.change(&mu, true, func() error { return store.Put(ctx, key, nil) }); err != nil {
		t.Fatal(err)
	}
	check(true, 1)
	if err := d.change(&mu, false, func() error { return store.Delete(ctx, key) }); err != nil {
		t.Fatal(err)
	}
	check(false, 1)
	failed := errors.New("disk full")
	if err := d.change(&mu, true, func() error { return failed }); !errors.Is(err, failed) {
		t.Fatalf("change returned %v, want the write's error", err)
	}
	check(false, 2) // unknown after the failure: read again
	check(false, 2)
}

// TestDirtyMarkKeepsAChangeOverAnOlderRead: a read of the datastore that
// started before a change and ends after it does not overwrite what the
// change recorded.
func TestDirtyMarkKeepsAChangeOverAnOlderRead(t *testing.T) {
	ctx := context.Background()
	store := &readCounter{Datastore: ds.NewMapDatastore(), entered: make(chan struct{}), release: make(chan struct{})}
	entered := store.entered
	key := ds.NewKey("/g/a,b/crdt/d")
	var mu sync.Mutex
	var d dirtyMark
	read := make(chan bool)
	go func() {
		ok, _ := d.has(ctx, store, key) // reads "clear", held
		read <- ok
	}()
	<-entered
	if err := d.change(&mu, true, func() error { return store.Datastore.Put(ctx, key, nil) }); err != nil {
		t.Fatal(err)
	}
	close(store.release)
	<-read
	store.release = nil
	if got, err := d.has(ctx, store, key); err != nil || !got {
		t.Fatalf("has after the change = %v, %v; want true (the older read must not overwrite it)", got, err)
	}
}
