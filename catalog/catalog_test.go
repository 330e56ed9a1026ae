package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestCatalog(t *testing.T, store Store, self string) *Catalog {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Store, cfg.Self, cfg.GatherDelay = store, self, time.Millisecond
	return newTestCatalogConfig(t, cfg)
}

func newTestCatalogConfig(t *testing.T, cfg Config) *Catalog {
	t.Helper()
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// view is a resource as a site resolves it, replica set included, in a
// form two sites' views can be compared in.
func view(c *Catalog, id string) (string, error) {
	r, err := c.Get(context.Background(), id)
	if err != nil {
		return "", err
	}
	data, _ := json.Marshal(struct {
		Resource
		Sites []string
	}{r, r.Sites})
	return string(data), nil
}

func create(t *testing.T, c *Catalog, service string, sites []string, locals map[string]string, pending ...string) string {
	t.Helper()
	id := NewID(time.Now())
	out := map[string]string{}
	for s := range locals {
		out[s] = "201"
	}
	for _, s := range pending {
		out[s] = OutcomePending
	}
	err := c.Create(context.Background(), Meta{ID: id, Service: service, Scope: "{" + service + ": " + strings.Join(sites, " & ") + "}",
		Sites: sites, Collection: "/posts", LocalIDs: locals},
		Operation{Method: "POST", Path: "/posts", Body: []byte(`{"title":"x"}`), Targets: sites, Outcomes: out})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCreateGetListLookup(t *testing.T) {
	store := newMemNet().store("paris")
	paris := newTestCatalog(t, store, "paris")
	ctx := context.Background()
	id := create(t, paris, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1", "berlin": "7"})
	other := create(t, paris, "images", []string{"paris"}, map[string]string{"paris": "3"})

	r, err := paris.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.Service != "posts" || r.PerSite["berlin"].LocalID != "7" || r.PerSite["berlin"].Status != StatusOK || len(r.Operations) != 1 {
		t.Fatalf("resource = %+v", r)
	}
	if got, ok := paris.LookupLocal("posts", "berlin", "7"); !ok || got != id {
		t.Fatalf("LookupLocal = %q, %v", got, ok)
	}
	if _, ok := paris.LookupLocal("images", "berlin", "7"); ok {
		t.Fatal("LookupLocal matched another service")
	}
	all, _ := paris.List(ctx, Filter{})
	posts, _ := paris.List(ctx, Filter{Service: "posts"})
	berlin, _ := paris.List(ctx, Filter{Site: "berlin"})
	if len(all) != 2 || len(posts) != 1 || posts[0].ID != id || len(berlin) != 1 || (all[0].ID != other && all[1].ID != other) {
		t.Fatalf("lists: %d %d %d", len(all), len(posts), len(berlin))
	}
	if _, err := paris.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
	// A second catalog reading the same store (a restart) sees the same.
	again := newTestCatalog(t, store, "paris")
	if r2, err := again.Get(ctx, id); err != nil || r2.PerSite["berlin"].LocalID != "7" {
		t.Fatalf("after reload: %+v, %v", r2, err)
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	ctx := context.Background()
	for name, m := range map[string]Meta{
		"bad id":       {ID: "x", Service: "s", Sites: []string{"paris"}},
		"no service":   {ID: NewID(time.Now()), Sites: []string{"paris"}},
		"not a member": {ID: NewID(time.Now()), Service: "s", Sites: []string{"berlin"}},
		"no sites":     {ID: NewID(time.Now()), Service: "s"},
	} {
		if err := c.Create(ctx, m, Operation{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if list, _ := c.List(ctx, Filter{}); len(list) != 0 {
		t.Fatalf("refused creates left %d resources", len(list))
	}
}

func TestPendingResolvesWithTheSiteRecord(t *testing.T) {
	store := newMemNet()
	paris := newTestCatalog(t, store.store("paris"), "paris")
	berlin := newTestCatalog(t, store.store("berlin"), "berlin")
	ctx := context.Background()
	id := create(t, paris, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1"}, "berlin")
	r, _ := paris.Get(ctx, id)
	if v := r.PerSite["berlin"]; v.Status != StatusPending || len(v.Pending) != 1 {
		t.Fatalf("berlin before = %+v", v)
	}
	if !paris.Owes(id) || paris.OwingCount() != 1 {
		t.Fatalf("paris: Owes %v, OwingCount %d, want true, 1", paris.Owes(id), paris.OwingCount())
	}
	createOp := r.Operations[0].ID
	if err := paris.SetSite(ctx, id, SiteRecord{Site: "berlin", LocalID: "9"}); !errors.Is(err, ErrNotSelf) {
		t.Fatalf("paris wrote berlin's record: %v", err)
	}
	if err := berlin.SetSite(ctx, id, SiteRecord{LocalID: "9", Status: StatusOK, Applied: map[string]string{createOp: "201"}}); err != nil {
		t.Fatal(err)
	}
	r, _ = paris.Get(ctx, id)
	if v := r.PerSite["berlin"]; v.Status != StatusOK || v.LocalID != "9" || len(v.Pending) != 0 {
		t.Fatalf("berlin after = %+v", v)
	}
	if paris.Owes(id) || paris.OwingCount() != 0 {
		t.Fatalf("paris after berlin's record: Owes %v, OwingCount %d, want false, 0", paris.Owes(id), paris.OwingCount())
	}
	if got, ok := paris.LookupLocal("posts", "berlin", "9"); !ok || got != id {
		t.Fatal("local id of the site record not indexed")
	}
	// An update owed by berlin, then failed there.
	upd := Operation{Resource: id, Method: "PUT", Path: "/posts/" + id, Targets: []string{"paris", "berlin"}, Outcomes: map[string]string{"paris": "200", "berlin": OutcomePending}}
	if err := paris.AppendOp(ctx, upd); err != nil {
		t.Fatal(err)
	}
	r, _ = paris.Get(ctx, id)
	if len(r.Operations) != 2 || len(r.PerSite["berlin"].Pending) != 1 {
		t.Fatalf("after update: %+v", r)
	}
	rec, _ := berlin.Record(id, "berlin")
	rec.Failed = map[string]string{r.Operations[1].ID: "422 Unprocessable Entity"}
	if err := berlin.SetSite(ctx, id, rec); err != nil {
		t.Fatal(err)
	}
	r, _ = paris.Get(ctx, id)
	if v := r.PerSite["berlin"]; len(v.Pending) != 0 || len(v.Failed) != 1 || !strings.Contains(v.Failed[0], "422") {
		t.Fatalf("failed op not shown: %+v", v)
	}
}

func TestOperationsInDeterministicOrder(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	ctx := context.Background()
	id := create(t, a, "s", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	at := Timestamp{Wall: time.Now().UnixMilli() + 1000}
	// Same timestamp from both sites: the site name breaks the tie.
	if err := b.AppendOp(ctx, Operation{ID: "op-b", Resource: id, At: at, Method: "PUT"}); err != nil {
		t.Fatal(err)
	}
	if err := a.AppendOp(ctx, Operation{ID: "op-a", Resource: id, At: at, Method: "PUT"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Catalog{a, b} {
		r, _ := c.Get(ctx, id)
		var ids []string
		for _, op := range r.Operations[1:] {
			ids = append(ids, op.ID)
		}
		if !slices.Equal(ids, []string{"op-a", "op-b"}) {
			t.Fatalf("order %v", ids)
		}
	}
}

func BenchmarkCreateMemStore(b *testing.B) {
	c, _ := New(context.Background(), Config{Store: newMemNet().store("paris"), Self: "paris"})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		id := NewID(time.Now())
		if err := c.Create(ctx, Meta{ID: id, Service: "posts", Sites: []string{"paris", "berlin"}, LocalIDs: map[string]string{"paris": "1"}},
			Operation{Method: "POST", Path: "/posts"}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	store := newMemNet().store("paris")
	good := DefaultConfig()
	good.Store, good.Self = store, "paris"
	if err := good.Validate(); err != nil {
		t.Fatalf("default config with store and site: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no store":        func(c *Config) { c.Store = nil },
		"no site":         func(c *Config) { c.Self = "" },
		"bad site":        func(c *Config) { c.Self = "par is" },
		"site with slash": func(c *Config) { c.Self = "a/b" },
		"zero buffer":     func(c *Config) { c.WatchBuffer = 0 },
		"negative delay":  func(c *Config) { c.GatherDelay = -time.Second },
	} {
		cfg := good
		mutate(&cfg)
		if err := cfg.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	// New fills the zero fields, then validates.
	if _, err := New(context.Background(), Config{Store: store, Self: "9paris"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("New with a bad site name: %v", err)
	}
	c, err := New(context.Background(), Config{Store: store, Self: "paris"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.cfg.WatchBuffer != DefaultConfig().WatchBuffer || c.cfg.GatherDelay != DefaultConfig().GatherDelay || c.Clock() == nil {
		t.Fatalf("defaults not filled: %+v", c.cfg)
	}
}

func TestWritesAreSyncedAndRefusedAfterClose(t *testing.T) {
	store := newMemNet().store("paris")
	c, err := New(context.Background(), Config{Store: store, Self: "paris"})
	if err != nil {
		t.Fatal(err)
	}
	id := create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	if err := c.AppendOp(context.Background(), Operation{Resource: id, Method: "PUT", Path: "/posts/1"}); err != nil {
		t.Fatal(err)
	}
	if n := store.syncCount(); n != 2 {
		t.Fatalf("%d syncs for a create and an update, want 2", n)
	}
	c.Close()
	c.Close() // idempotent
	if err := c.AppendOp(context.Background(), Operation{Resource: id, Method: "PUT"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("AppendOp after Close: %v", err)
	}
	if err := c.Create(context.Background(), Meta{ID: NewID(time.Now()), Service: "s", Sites: []string{"paris"}}, Operation{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Create after Close: %v", err)
	}
}

// Two sites cut off from each other keep writing their own records and
// operations of one resource; after the heal both resolve the same view,
// whatever order the keys arrived in.
func TestConcurrentWritesFromTwoSitesResolveAlike(t *testing.T) {
	net := newMemNet()
	paris := newTestCatalog(t, net.store("paris"), "paris")
	berlin := newTestCatalog(t, net.store("berlin"), "berlin")
	ctx := context.Background()
	id := create(t, paris, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1", "berlin": "7"})
	createOp := mustGet(t, paris, id).Operations[0].ID

	net.isolate("berlin")
	var parisOps, berlinOps []string
	for i := range 5 {
		for _, w := range []struct {
			c   *Catalog
			ops *[]string
		}{{paris, &parisOps}, {berlin, &berlinOps}} {
			op := Operation{Resource: id, Method: "PATCH", Path: fmt.Sprintf("/posts/x?%d", i), Targets: []string{"paris", "berlin"},
				Outcomes: map[string]string{w.c.Self(): "200", other(w.c.Self()): OutcomePending}}
			if err := w.c.AppendOp(ctx, op); err != nil {
				t.Fatal(err)
			}
			r := mustGet(t, w.c, id)
			*w.ops = append(*w.ops, r.Operations[len(r.Operations)-1].ID)
			rec, _ := w.c.Record(id, w.c.Self())
			rec.Status, rec.LocalID = StatusOK, map[string]string{"paris": "1", "berlin": "7"}[w.c.Self()]
			if rec.Applied == nil {
				rec.Applied = map[string]string{createOp: "201"}
			}
			rec.Applied[fmt.Sprintf("%s-%d", w.c.Self(), i)] = "200"
			if err := w.c.SetSite(ctx, id, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Cut off, each sees only its own writes.
	if n := len(mustGet(t, paris, id).Operations); n != 6 {
		t.Fatalf("paris sees %d operations while cut off, want 6", n)
	}
	net.heal()
	pv, err := view(paris, id)
	if err != nil {
		t.Fatal(err)
	}
	bv, err := view(berlin, id)
	if err != nil {
		t.Fatal(err)
	}
	if pv != bv {
		t.Fatalf("views differ after the heal:\nparis  %s\nberlin %s", pv, bv)
	}
	r := mustGet(t, paris, id)
	if len(r.Operations) != 11 {
		t.Fatalf("%d operations after the heal, want 11", len(r.Operations))
	}
	// Each site's pending list holds exactly the other's operations.
	if !slices.Equal(sorted(r.PerSite["berlin"].Pending), sorted(parisOps)) || !slices.Equal(sorted(r.PerSite["paris"].Pending), sorted(berlinOps)) {
		t.Fatalf("pending: paris %v (want %v), berlin %v (want %v)", r.PerSite["paris"].Pending, berlinOps, r.PerSite["berlin"].Pending, parisOps)
	}
	for _, site := range []string{"paris", "berlin"} {
		rec, _ := paris.Record(id, site)
		if len(rec.Applied) != 6 { // the create and its own five
			t.Fatalf("%s's newest record not kept: %+v", site, rec)
		}
	}
	// A restart resolves the same view from the store alone.
	again := newTestCatalog(t, net.store("berlin"), "berlin")
	if av, _ := view(again, id); av != bv {
		t.Fatalf("view after a restart differs:\n%s\n%s", av, bv)
	}
}

func other(site string) string {
	if site == "paris" {
		return "berlin"
	}
	return "paris"
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func mustGet(t *testing.T, c *Catalog, id string) Resource {
	t.Helper()
	r, err := c.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A site's record can arrive before the resource's meta: its local id is
// indexed once the meta is there.
func TestRecordBeforeMetaIsIndexed(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	id := NewID(time.Now())
	sites := []string{"paris", "berlin"}
	rec, _ := json.Marshal(SiteRecord{Site: "berlin", LocalID: "b-9", Status: StatusOK, At: Timestamp{Wall: 10}})
	c.apply(sites, siteKey(id, "berlin"), rec)
	if _, err := c.Get(context.Background(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a resource without meta: %v", err)
	}
	if _, ok := c.LookupLocal("posts", "berlin", "b-9"); ok {
		t.Fatal("indexed without a meta")
	}
	meta, _ := json.Marshal(Meta{ID: id, Service: "posts", Sites: sites, LocalIDs: map[string]string{"paris": "p-1"}})
	c.apply(sites, metaKey(id, "paris"), meta)
	for local, want := range map[string]bool{"b-9": true, "p-1": false} {
		if got, ok := c.LookupLocal("posts", "berlin", local); ok != want || (ok && got != id) {
			t.Errorf("LookupLocal(berlin, %s) = %q, %v", local, got, ok)
		}
	}
	if got, ok := c.LookupLocal("posts", "paris", "p-1"); !ok || got != id {
		t.Fatalf("paris' local id from the meta: %q %v", got, ok)
	}
	// A newer record with another local id replaces the old mapping.
	rec, _ = json.Marshal(SiteRecord{Site: "berlin", LocalID: "b-10", Status: StatusOK, At: Timestamp{Wall: 20}})
	c.apply(sites, siteKey(id, "berlin"), rec)
	if _, ok := c.LookupLocal("posts", "berlin", "b-9"); ok {
		t.Fatal("stale local id still indexed")
	}
	if got, ok := c.LookupLocal("posts", "berlin", "b-10"); !ok || got != id {
		t.Fatal("new local id not indexed")
	}
}

// The store's change feed can deliver a site's own write after a newer
// one (the feed is asynchronous, own writes are applied at once): the
// older value must not win.
func TestStaleChangesAreIgnored(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	id := create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	old, _ := json.Marshal(SiteRecord{Site: "paris", LocalID: "1", Status: StatusOK, At: Timestamp{Wall: 1}})
	if err := c.SetSite(context.Background(), id, SiteRecord{LocalID: "1", Status: StatusDeleted}); err != nil {
		t.Fatal(err)
	}
	c.apply([]string{"paris"}, siteKey(id, "paris"), old)
	if s := mustGet(t, c, id).PerSite["paris"].Status; s != StatusDeleted {
		t.Fatalf("an older record replaced a newer one: status %s", s)
	}
}

// go-ds-crdt reports a deletion also when a key keeps a value; the catalog
// reads the key again and keeps what is there.
func TestDeletionReportedWhileValueRemains(t *testing.T) {
	store := newMemNet().store("paris")
	c := newTestCatalog(t, store, "paris")
	id := create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	c.applyDelete([]string{"paris"}, metaKey(id, "paris"))
	if _, err := c.Get(context.Background(), id); err != nil {
		t.Fatalf("a deletion report for a key still in the store removed the resource: %v", err)
	}
	// A real deletion does remove it.
	if err := store.Delete(context.Background(), []string{"paris"}, metaKey(id, "paris")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the meta was deleted: %v", err)
	}
	if _, ok := c.LookupLocal("posts", "paris", "1"); ok {
		t.Fatal("local id of a removed resource still indexed")
	}
}

// A site outside a resource's scope holds none of its keys and knows
// nothing of it.
func TestSiteOutsideTheScopeKnowsNothing(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	c := newTestCatalog(t, net.store("c"), "c")
	ctx := context.Background()
	ab := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	ac := create(t, a, "posts", []string{"a", "c"}, map[string]string{"a": "3", "c": "4"})
	if err := b.SetSite(ctx, ab, SiteRecord{LocalID: "2", Status: StatusOK}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, ab); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c: Get = %v", err)
	}
	if list, _ := c.List(ctx, Filter{}); len(list) != 1 || list[0].ID != ac {
		t.Fatalf("c lists %v", list)
	}
	for _, k := range net.store("c").keys() {
		if strings.Contains(k, ab) {
			t.Fatalf("c holds %s", k)
		}
	}
	if _, err := b.Get(ctx, ab); err != nil {
		t.Fatalf("b: %v", err)
	}
	if err := c.SetSite(ctx, ab, SiteRecord{LocalID: "x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c wrote a record of a resource it does not hold: %v", err)
	}
}

func TestListFilters(t *testing.T) {
	net := newMemNet()
	c := newTestCatalog(t, net.store("a"), "a")
	ctx := context.Background()
	p1 := create(t, c, "posts", []string{"a", "b"}, map[string]string{"a": "1"})
	p2 := create(t, c, "posts", []string{"a"}, map[string]string{"a": "2"})
	i1 := create(t, c, "images", []string{"a", "c"}, map[string]string{"a": "3"})
	ids := func(f Filter) []string {
		list, err := c.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range list {
			out = append(out, r.ID)
		}
		return out
	}
	for _, tc := range []struct {
		f    Filter
		want []string
	}{
		{Filter{}, []string{p1, p2, i1}},
		{Filter{Service: "posts"}, []string{p1, p2}},
		{Filter{Site: "b"}, []string{p1}},
		{Filter{Site: "a", Service: "images"}, []string{i1}},
		{Filter{Site: "c", Service: "posts"}, nil},
		{Filter{Service: "nothing"}, nil},
	} {
		if got := ids(tc.f); !slices.Equal(got, sorted(tc.want)) {
			t.Errorf("List(%+v) = %v, want %v", tc.f, got, sorted(tc.want))
		}
	}
}

// TestCreateViewIsWhatTheStoreHolds: the view keeps a create's own values
// without decoding them (applyOwn); it must show what a catalog reading
// them back from the store shows, and share nothing with the caller.
func TestCreateViewIsWhatTheStoreHolds(t *testing.T) {
	store := newMemNet().store("paris")
	paris := newTestCatalog(t, store, "paris")
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		locals map[string]string
		body   []byte
	}{{"local ids", map[string]string{"paris": "1"}, []byte(`{"t":1}`)}, {"empty", map[string]string{}, []byte{}}} {
		id := NewID(time.Now())
		sites := []string{"paris", "berlin"}
		outcomes := map[string]string{"paris": "201", "berlin": OutcomePending}
		if err := paris.Create(ctx, Meta{ID: id, Service: "posts", Scope: "{posts: paris & berlin}", Sites: sites, Collection: "/posts", LocalIDs: tc.locals},
			Operation{Method: "POST", Path: "/posts", Body: tc.body, Targets: sites, Outcomes: outcomes}); err != nil {
			t.Fatal(err)
		}
		sites[0], outcomes["paris"] = "rome", "500"
		// A later write re-derives the resource from what the view holds.
		if err := paris.AppendOp(ctx, Operation{Resource: id, Method: "PUT", Path: "/posts/" + id, Targets: []string{"paris", "berlin"}, Outcomes: map[string]string{"paris": "200", "berlin": "200"}}); err != nil {
			t.Fatal(err)
		}
		mine, err := paris.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		read, err := newTestCatalog(t, store, "paris").Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(mine, read) {
			t.Errorf("%s: the view of its own create\n%+v\nread back\n%+v", tc.name, mine, read)
		}
	}
}

// TestOutcomesViewIsWhatTheStoreHolds: the view keeps recorded outcomes
// as encoded (applyOwn), sharing nothing with the older record it holds:
// it shows what a catalog reading them back from the store shows, after
// each batch.
func TestOutcomesViewIsWhatTheStoreHolds(t *testing.T) {
	store := newMemNet().store("berlin")
	berlin := newTestCatalog(t, store, "berlin")
	ctx := context.Background()
	id := create(t, berlin, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1"}, "berlin")
	createOp := mustGet(t, berlin, id).Operations[0].ID
	for i, batch := range [][]Outcome{
		{{Resource: id, Op: createOp, LocalID: "7", Applied: "201"}},
		{{Resource: id, Op: "u1", Applied: "200"}, {Resource: id, Op: "u2", Failed: "422: no"}},
		{{Resource: id, Op: "u3", Applied: "superseded by u4"}},
	} {
		before, _ := berlin.Record(id, "berlin")
		held := maps.Clone(before.Applied)
		if err := berlin.RecordOutcomes(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(before.Applied, held) {
			t.Fatalf("batch %d changed the record read before it: %v, was %v", i, before.Applied, held)
		}
		mine, _ := berlin.Record(id, "berlin")
		read, _ := newTestCatalog(t, store, "berlin").Record(id, "berlin")
		if !reflect.DeepEqual(mine, read) {
			t.Fatalf("batch %d: the view of its own outcomes\n%+v\nread back\n%+v", i, mine, read)
		}
	}
	if rec, _ := berlin.Record(id, "berlin"); rec.LocalID != "7" || len(rec.Applied) != 3 || rec.Failed["u2"] != "422: no" {
		t.Fatalf("berlin's record: %+v", rec)
	}
}
