package catalog

import (
	"cheops/internal/testkit"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// Attach c to a resource of {a, b}, then detach it: c receives the entry
// with its history and b's record, then forgets it; b never loses it.
func TestRehomeAttachThenDetach(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	c := newTestCatalog(t, net.store("c"), "c")
	ctx := context.Background()
	bWatch := b.Watch(t.Context())
	cWatch := c.Watch(t.Context())
	id := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	createOp := mustGet(t, a, id).Operations[0].ID
	if err := b.SetSite(ctx, id, SiteRecord{LocalID: "2", Status: StatusOK, Applied: map[string]string{createOp: "201"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.AppendOp(ctx, Operation{Resource: id, Method: "PUT", Path: "/posts/1", Outcomes: map[string]string{"a": "200", "b": "200"}}); err != nil {
		t.Fatal(err)
	}

	// Attach c.
	if err := a.Rehome(ctx, id, []string{"a", "b", "c"}, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Catalog{a, b, c} {
		r := mustGet(t, x, id)
		if !slices.Equal(r.Sites, []string{"a", "b", "c"}) || len(r.Operations) != 2 || r.PerSite["c"].LocalID != "3" {
			t.Fatalf("%s after attach: %+v", x.Self(), r)
		}
	}
	if got, ok := c.LookupLocal("posts", "c", "3"); !ok || got != id {
		t.Fatal("c cannot translate its own local id")
	}
	if n := c.Len(); n != 1 {
		t.Fatalf("c's Len after attach: %d, want 1", n)
	}
	// b copies its own record into the new group, so c sees it.
	testkit.Eventually(t, 5*time.Second, "c holds b's record", func() error {
		if rec, ok := c.Record(id, "b"); !ok || rec.Applied[createOp] != "201" {
			return fmt.Errorf("c has %+v", rec)
		}
		return nil
	})
	// New writes go to the new group.
	if err := b.AppendOp(ctx, Operation{Resource: id, Method: "PATCH", Path: "/posts/2"}); err != nil {
		t.Fatal(err)
	}
	if n := len(mustGet(t, c, id).Operations); n != 3 {
		t.Fatalf("c sees %d operations, want 3", n)
	}

	// Detach c.
	if err := b.Rehome(ctx, id, []string{"a", "b"}, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c after detach: %v", err)
	}
	if list, _ := c.List(ctx, Filter{}); len(list) != 0 || c.Len() != 0 {
		t.Fatalf("c lists %v (Len %d)", list, c.Len())
	}
	if a.Len() != 1 || b.Len() != 1 {
		t.Fatalf("Len after detach: a %d, b %d, want 1", a.Len(), b.Len())
	}
	if _, ok := c.LookupLocal("posts", "c", "3"); ok {
		t.Fatal("c still translates its local id")
	}
	if err := c.AppendOp(ctx, Operation{Resource: id, Method: "PUT"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c wrote to a resource it left: %v", err)
	}
	for _, x := range []*Catalog{a, b} {
		r := mustGet(t, x, id)
		if !slices.Equal(r.Sites, []string{"a", "b"}) || len(r.Operations) != 3 {
			t.Fatalf("%s after detach: %+v", x.Self(), r)
		}
		if _, listed := r.PerSite["c"]; listed {
			t.Fatalf("%s still lists c", x.Self())
		}
	}
	// c was told it lost the resource; b never was.
	if !drainFor(cWatch, Change{ID: id, Kind: KindRemoved}) {
		t.Fatal("c was not told the resource left it")
	}
	if drainFor(bWatch, Change{ID: id, Kind: KindRemoved}) {
		t.Fatal("b was told it lost a resource it kept")
	}
	// Restarted, every site resolves the same from its store alone.
	for _, site := range []string{"a", "b", "c"} {
		again := newTestCatalog(t, net.store(site), site)
		_, err := again.Get(ctx, id)
		if (site == "c") != errors.Is(err, ErrNotFound) {
			t.Fatalf("%s after a restart: %v", site, err)
		}
	}
	// Nothing was deleted: the keys stay where they were written.
	if keys := net.store("c").keys(); len(keys) == 0 {
		t.Fatal("c's replica is empty")
	}
}

// drainFor reads what is queued and reports whether want was among it.
func drainFor(ch <-chan Change, want Change) bool {
	for {
		select {
		case c := <-ch:
			if c == want {
				return true
			}
		default:
			return false
		}
	}
}

// a and b move the same resource at once while cut off from each other:
// once they hear of each other, both keep the same replica set.
func TestConcurrentRehomesResolveAlike(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	newTestCatalog(t, net.store("c"), "c")
	newTestCatalog(t, net.store("d"), "d")
	ctx := context.Background()
	id := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	net.isolate("b")
	if err := a.Rehome(ctx, id, []string{"a", "b", "c"}, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Rehome(ctx, id, []string{"a", "b", "d"}, map[string]string{"a": "1", "b": "2", "d": "4"}); err != nil {
		t.Fatal(err)
	}
	net.heal()
	av, err := view(a, id)
	if err != nil {
		t.Fatal(err)
	}
	bv, err := view(b, id)
	if err != nil {
		t.Fatal(err)
	}
	if av != bv {
		t.Fatalf("a and b disagree:\n%s\n%s", av, bv)
	}
	// b moved last (its clock read later, or it won the tie by name).
	if r := mustGet(t, a, id); !slices.Equal(r.Sites, []string{"a", "b", "d"}) {
		t.Fatalf("replica set %v", r.Sites)
	}
}

// An operation recorded in the old group while the resource moved (the
// recording site had not heard of the move) is copied into the new group,
// so the site that joined sees it too.
func TestOperationRecordedDuringAMoveReachesTheNewGroup(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	c := newTestCatalog(t, net.store("c"), "c")
	ctx := context.Background()
	id := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	net.isolate("b")
	late := Operation{Resource: id, ID: NewID(time.Now()), Method: "PATCH", Path: "/posts/2"}
	if err := b.AppendOp(ctx, late); err != nil {
		t.Fatal(err)
	}
	if err := a.Rehome(ctx, id, []string{"a", "b", "c"}, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
		t.Fatal(err)
	}
	if n := len(mustGet(t, c, id).Operations); n != 1 {
		t.Fatalf("c sees %d operations before the heal", n)
	}
	net.heal()
	testkit.Eventually(t, 5*time.Second, "c sees the late operation", func() error {
		for _, op := range mustGet(t, c, id).Operations {
			if op.ID == late.ID {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	for _, x := range []*Catalog{a, b, c} {
		if r := mustGet(t, x, id); len(r.Operations) != 2 || !slices.Equal(r.Sites, []string{"a", "b", "c"}) {
			t.Fatalf("%s: %+v", x.Self(), r)
		}
	}
}

func TestRehomeRefusesBadInput(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	ctx := context.Background()
	id := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1"})
	for name, tc := range map[string]struct {
		id    string
		sites []string
		want  error
	}{
		"without this site": {id, []string{"b", "c"}, ErrInvalid},
		"no sites":          {id, nil, ErrInvalid},
		"duplicate site":    {id, []string{"a", "a"}, ErrInvalid},
		"bad site name":     {id, []string{"a", "b/c"}, ErrInvalid},
		"unknown resource":  {NewID(time.Now()), []string{"a"}, ErrNotFound},
	} {
		if err := a.Rehome(ctx, tc.id, tc.sites, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if r := mustGet(t, a, id); !slices.Equal(r.Sites, []string{"a", "b"}) {
		t.Fatalf("a refused move changed the sites: %v", r.Sites)
	}
}
