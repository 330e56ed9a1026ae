package catalog

import (
	"context"
	"testing"
	"time"
)

// next reads one change, or fails after a few seconds.
func next(t *testing.T, ch <-chan Change) Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5 s")
	}
	return Change{}
}

// Every watcher receives every change, in order.
func TestWatchFansOut(t *testing.T) {
	net := newMemNet()
	paris := newTestCatalog(t, net.store("paris"), "paris")
	berlin := newTestCatalog(t, net.store("berlin"), "berlin")
	ctx := t.Context()
	watches := []<-chan Change{berlin.Watch(ctx), berlin.Watch(ctx), berlin.Watch(ctx)}
	id := create(t, paris, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1", "berlin": "2"})
	if err := berlin.SetSite(ctx, id, SiteRecord{LocalID: "2", Status: StatusOK}); err != nil {
		t.Fatal(err)
	}
	op := Operation{Resource: id, ID: NewID(time.Now()), Method: "PUT"}
	if err := paris.AppendOp(ctx, op); err != nil {
		t.Fatal(err)
	}
	want := []Change{{ID: id, Kind: KindMeta}, {ID: id, Kind: KindOp}, {ID: id, Kind: KindSite, Site: "berlin"}, {ID: id, Kind: KindOp, Op: op.ID}}
	for i, w := range watches {
		for j, exp := range want {
			got := next(t, w)
			if got.ID != exp.ID || got.Kind != exp.Kind || (exp.Site != "" && got.Site != exp.Site) || (exp.Op != "" && got.Op != exp.Op) {
				t.Fatalf("watcher %d, change %d: %+v, want %+v", i, j, got, exp)
			}
		}
	}
	// A change to a resource berlin does not hold is not reported.
	create(t, paris, "posts", []string{"paris"}, map[string]string{"paris": "9"})
	select {
	case c := <-watches[0]:
		t.Fatalf("berlin reported %+v of a resource it does not hold", c)
	default:
	}
}

// A watcher that does not read falls behind: the store and the other
// watchers are not held up, and once it reads it gets what fitted in its
// buffer, then one resync, then the changes after.
func TestSlowWatcherGetsAResync(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Store, cfg.Self, cfg.WatchBuffer = newMemNet().store("paris"), "paris", 4
	c := newTestCatalogConfig(t, cfg)
	ctx := t.Context()
	slow := c.Watch(ctx)
	fast := c.Watch(ctx)
	// The fast watcher follows the protocol: a change names a resource, a
	// resync means re-list. It ends up knowing all ten resources.
	done := make(chan int)
	go func() {
		seen := map[string]bool{}
		for ch := range fast {
			switch ch.Kind {
			case KindMeta:
				seen[ch.ID] = true
			case KindResync:
				list, _ := c.List(ctx, Filter{})
				for _, r := range list {
					seen[r.ID] = true
				}
			}
			if len(seen) == 10 {
				break
			}
		}
		done <- len(seen)
	}()
	var ids []string
	for range 10 {
		ids = append(ids, create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})) // never blocks
	}
	select {
	case n := <-done:
		if n != 10 {
			t.Fatalf("the fast watcher knows %d resources", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fast watcher missed resources")
	}
	for i := range 4 {
		if got := next(t, slow); got.ID != ids[i/2] {
			t.Fatalf("buffered change %d: %+v", i, got)
		}
	}
	if got := next(t, slow); got.Kind != KindResync || got.ID != "" {
		t.Fatalf("after the buffer: %+v, want a resync", got)
	}
	later := create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "2"})
	if got := next(t, slow); got.ID != later || got.Kind != KindMeta {
		t.Fatalf("after the resync: %+v, want the next change", got)
	}
}

func TestWatchEndsWithItsContextAndWithClose(t *testing.T) {
	c, err := New(context.Background(), Config{Store: newMemNet().store("paris"), Self: "paris"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	short := c.Watch(ctx)
	long := c.Watch(context.Background())
	cancel()
	for range short {
	}
	create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	if got := next(t, long); got.Kind != KindMeta {
		t.Fatalf("%+v", got)
	}
	c.Close() // waits for the watch goroutines
	for range long {
	}
	if _, ok := <-c.Watch(context.Background()); ok {
		t.Fatal("a watch after Close is open")
	}
}
