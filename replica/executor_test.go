package replica

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"

	"cheops/catalog"
)

// memApp is an in-memory REST collection: POST creates with a numeric id,
// PUT replaces, PATCH merges, DELETE removes.
type memApp struct {
	mu    sync.Mutex
	next  int
	items map[string]map[string]any
	calls int
}

func newMemApp() *memApp { return &memApp{items: map[string]map[string]any{}} }

func (a *memApp) Call(_ context.Context, _, method, path string, _ http.Header, body []byte) (Answer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	path = stripType(path)
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var in map[string]any
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			return Answer{Status: 400}, nil
		}
	}
	reply := func(status int, v any) (Answer, error) {
		b, _ := json.Marshal(v)
		return Answer{Status: status, Body: b}, nil
	}
	if len(parts) == 1 {
		switch method {
		case http.MethodPost:
			a.next++
			id := strconv.Itoa(a.next)
			item := maps.Clone(in)
			item["id"] = id
			a.items[id] = item
			return reply(201, item)
		case http.MethodGet:
			list := []map[string]any{}
			for _, it := range a.items {
				list = append(list, it)
			}
			return reply(200, list)
		}
		return reply(405, nil)
	}
	id := parts[1]
	item, ok := a.items[id]
	if !ok {
		return reply(404, map[string]any{})
	}
	switch method {
	case http.MethodGet:
		return reply(200, item)
	case http.MethodPut:
		item = maps.Clone(in)
		item["id"] = id
	case http.MethodPatch:
		item = maps.Clone(item)
		maps.Copy(item, in)
	case http.MethodDelete:
		delete(a.items, id)
		return reply(200, map[string]any{})
	}
	a.items[id] = item
	return reply(200, item)
}

func (a *memApp) LocalID(_, _ string, body []byte) (string, bool) {
	var v map[string]any
	if json.Unmarshal(body, &v) != nil {
		return "", false
	}
	id, ok := v["id"].(string)
	return id, ok
}

// state is the application's only item, as JSON ("" when none).
func (a *memApp) state() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.items) == 0 {
		return ""
	}
	if len(a.items) > 1 {
		return fmt.Sprintf("%d items", len(a.items))
	}
	for _, it := range a.items {
		b, _ := json.Marshal(it)
		return string(b)
	}
	return ""
}

const gid = "01TESTRESOURCE0000000000AA"

func op(id string, wall int64, origin, method, body string) catalog.Operation {
	path := "/posts/" + gid
	return catalog.Operation{ID: id, Resource: gid, Origin: origin, At: catalog.Timestamp{Wall: wall}, Method: method, Path: path, Body: []byte(body)}
}

func createJob() Job {
	c := catalog.Operation{ID: "op0", Resource: gid, Origin: "paris", At: catalog.Timestamp{Wall: 1}, Method: http.MethodPost, Path: "/posts", Body: []byte(`{"t":"v0"}`)}
	return Job{Op: c, Service: "posts", Create: true, Collection: "/posts"}
}

func newExecutor(t *testing.T, app App, store ds.Datastore) *Executor {
	t.Helper()
	x, err := NewExecutor(Config{App: app, Journal: store})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// reference applies ops in the catalog's order to a fresh application.
func reference(t *testing.T, ops []catalog.Operation) string {
	app := newMemApp()
	x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
	ctx := context.Background()
	if r := x.Apply(ctx, createJob()); !r.OK() {
		t.Fatalf("reference create: %+v", r)
	}
	sorted := append([]catalog.Operation(nil), ops...)
	slices.SortFunc(sorted, catalog.CompareOps)
	for _, o := range sorted {
		if r := x.Apply(ctx, Job{Op: o, Service: "posts"}); r.Err != nil {
			t.Fatalf("reference %s: %v", o.ID, r.Err)
		}
	}
	return app.state()
}

func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

var opSets = map[string][]catalog.Operation{
	"patches and replaces": {
		op("a", 10, "paris", "PUT", `{"t":"a","x":1}`),
		op("b", 20, "berlin", "PATCH", `{"t":"b","y":2}`),
		op("c", 20, "rome", "PATCH", `{"z":3}`),
		op("d", 30, "paris", "PATCH", `{"t":"d"}`),
		op("e", 40, "berlin", "PATCH", `{"y":5}`),
	},
	"replace in the middle": {
		op("a", 10, "paris", "PATCH", `{"t":"a","x":1}`),
		op("b", 20, "berlin", "PUT", `{"t":"b"}`),
		op("c", 30, "rome", "PATCH", `{"z":3}`),
		op("d", 40, "paris", "PUT", `{"t":"d","w":4}`),
		op("e", 50, "berlin", "PATCH", `{"t":"e"}`),
	},
	"delete among updates": {
		op("a", 10, "paris", "PATCH", `{"t":"a"}`),
		op("b", 20, "berlin", "DELETE", ``),
		op("c", 30, "rome", "PUT", `{"t":"c"}`),
		op("d", 40, "paris", "PATCH", `{"t":"d"}`),
	},
	"same HLC, origin breaks the tie": {
		op("a", 10, "rome", "PUT", `{"t":"rome"}`),
		op("b", 10, "berlin", "PUT", `{"t":"berlin"}`),
		op("c", 10, "paris", "PATCH", `{"p":1}`),
		op("d", 10, "berlin", "PATCH", `{"q":1}`),
	},
}

// TestEveryArrivalOrderEndsInTheCatalogOrder drives one replica through
// every order in which a set of operations can arrive (each delivered
// twice, as a live request and again by catch-up) and checks that the
// application ends in the state of the catalog's order every time.
func TestEveryArrivalOrderEndsInTheCatalogOrder(t *testing.T) {
	ctx := context.Background()
	for name, ops := range opSets {
		t.Run(name, func(t *testing.T) {
			want := reference(t, ops)
			if want == "" && !strings.Contains(name, "delete") {
				t.Fatalf("reference state is empty")
			}
			for _, perm := range permutations(len(ops)) {
				app := newMemApp()
				x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
				// The first operation arrives before the create: it must
				// wait, not fail.
				if r := x.Apply(ctx, Job{Op: ops[perm[0]], Service: "posts"}); r.Err == nil {
					t.Fatalf("%v: an update before the create ran: %+v", perm, r)
				}
				if r := x.Apply(ctx, createJob()); !r.OK() || r.LocalID != "1" {
					t.Fatalf("create: %+v", r)
				}
				for _, i := range perm {
					r := x.Apply(ctx, Job{Op: ops[i], Service: "posts"})
					if r.Err != nil {
						t.Fatalf("%v: %s: %v", perm, ops[i].ID, r.Err)
					}
				}
				for _, i := range perm {
					if r := x.Apply(ctx, Job{Op: ops[i], Service: "posts"}); !r.Duplicate {
						t.Fatalf("%v: %s ran twice", perm, ops[i].ID)
					}
				}
				if got := app.state(); got != want {
					t.Fatalf("arrival order %v: application holds %s, the catalog's order gives %s", perm, got, want)
				}
			}
		})
	}
}

// TestConcurrentDeliveriesConverge applies one set of operations from
// many goroutines at once on two replicas (different interleavings) and
// compares them with the catalog's order.
func TestConcurrentDeliveriesConverge(t *testing.T) {
	ctx := context.Background()
	ops := opSets["patches and replaces"]
	want := reference(t, ops)
	for rep := range 20 {
		app := newMemApp()
		x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
		if r := x.Apply(ctx, createJob()); !r.OK() {
			t.Fatal(r)
		}
		var wg sync.WaitGroup
		for i := range ops {
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					x.Apply(ctx, Job{Op: ops[(i+rep)%len(ops)], Service: "posts"})
				}()
			}
		}
		wg.Wait()
		if got := app.state(); got != want {
			t.Fatalf("rep %d: %s, want %s", rep, got, want)
		}
	}
}

// TestCreateMaybeExecutedIsAdopted: an executor that stopped after the
// application created the item and before the outcome was journaled
// adopts that item instead of creating a second one.
func TestCreateMaybeExecutedIsAdopted(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	app := newMemApp()
	j := createJob()
	// What a crash leaves: the intent, and the item in the application.
	if err := (journal{store: store}).put(ctx, opEntryKey(gid, j.Op.ID), &entry{Op: j.Op, State: stateBegun}, true); err != nil {
		t.Fatal(err)
	}
	app.Call(ctx, "posts", "POST", "/posts", nil, j.Op.Body)
	x := newExecutor(t, app, store)
	r := x.Apply(ctx, j)
	if !r.OK() || r.LocalID != "1" {
		t.Fatalf("adopt: %+v", r)
	}
	if n := len(app.items); n != 1 {
		t.Fatalf("application holds %d items, want 1", n)
	}
	// A later executor over the same journal knows the outcome.
	if r := newExecutor(t, app, store).Apply(ctx, j); !r.Duplicate || r.LocalID != "1" {
		t.Fatalf("after restart: %+v", r)
	}
}

// TestRefusalIsFinalAndTransientIsRetried: a 4xx is recorded failed and
// not counted for the order; a 5xx leaves the operation to retry.
func TestRefusalIsFinalAndTransientIsRetried(t *testing.T) {
	ctx := context.Background()
	app := newMemApp()
	x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
	x.Apply(ctx, createJob())
	bad := op("bad", 10, "paris", "PATCH", `not json`)
	if r := x.Apply(ctx, Job{Op: bad, Service: "posts"}); r.Failed == "" || r.Err != nil || !strings.HasPrefix(r.Failed, "400") {
		t.Fatalf("refused: %+v", r)
	}
	flaky := &flakyApp{memApp: app, fail: 1}
	y := newExecutor(t, flaky, dssync.MutexWrap(ds.NewMapDatastore()))
	y.Apply(ctx, createJob())
	p := op("p", 10, "paris", "PATCH", `{"t":"p"}`)
	if r := y.Apply(ctx, Job{Op: p, Service: "posts"}); r.Err == nil {
		t.Fatalf("a 503 must be transient: %+v", r)
	}
	if r := y.Apply(ctx, Job{Op: p, Service: "posts"}); !r.OK() || r.Outcome != "200" {
		t.Fatalf("retry: %+v", r)
	}
}

type flakyApp struct {
	*memApp
	fail int
}

func (f *flakyApp) Call(ctx context.Context, svc, method, path string, h http.Header, body []byte) (Answer, error) {
	if method == http.MethodPatch && f.fail > 0 {
		f.fail--
		return Answer{Status: 503}, nil
	}
	return f.memApp.Call(ctx, svc, method, path, h, body)
}

// TestApplyOwedEndsInTheCatalogOrderWithEachReplayOnce: a replica applied
// some of a resource's operations live (in any order) and owes the others,
// which catch-up hands to ApplyOwed in the catalog's order. For every
// split and every live order the application ends in the state of the
// catalog's order, and no call is wasted: at most one per owed operation
// plus one per applied operation it runs again.
func TestApplyOwedEndsInTheCatalogOrderWithEachReplayOnce(t *testing.T) {
	ctx := context.Background()
	for name, ops := range opSets {
		t.Run(name, func(t *testing.T) {
			want := reference(t, ops)
			for mask := 0; mask < 1<<len(ops); mask++ {
				var live, owed []catalog.Operation
				for i, o := range ops {
					if mask&(1<<i) != 0 {
						live = append(live, o)
					} else {
						owed = append(owed, o)
					}
				}
				slices.SortFunc(owed, catalog.CompareOps)
				for _, perm := range permutations(len(live)) {
					app := newMemApp()
					x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
					if r := x.Apply(ctx, createJob()); !r.OK() {
						t.Fatalf("create: %+v", r)
					}
					for _, i := range perm {
						if r := x.Apply(ctx, Job{Op: live[i], Service: "posts"}); r.Err != nil {
							t.Fatalf("live %s: %v", live[i].ID, r.Err)
						}
					}
					before := app.calls
					jobs := make([]Job, len(owed))
					for i, o := range owed {
						jobs[i] = Job{Op: o, Service: "posts", Owed: true}
					}
					results := x.ApplyOwed(ctx, jobs)
					if len(results) != len(jobs) {
						t.Fatalf("%d results for %d owed operations", len(results), len(jobs))
					}
					for i, r := range results {
						if r.Err != nil {
							t.Fatalf("owed %s: %v", owed[i].ID, r.Err)
						}
					}
					if got := app.state(); got != want {
						t.Fatalf("live %v in order %v, owed %v: application holds %s, the catalog's order gives %s",
							ids(live), perm, ids(owed), got, want)
					}
					// Each owed operation costs at most two calls (a
					// superseded one reads the resource), each live one at
					// most one replay.
					if calls := app.calls - before; calls > 2*len(owed)+len(live) {
						t.Fatalf("live %v, owed %v: %d calls to the application", ids(live), ids(owed), calls)
					}
				}
			}
		})
	}
}

func ids(ops []catalog.Operation) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.ID
	}
	return out
}

// TestApplyOwedReplaysLessThanApplyOneByOne: k late patches interleaved
// with k applied ones: one by one, each late patch replays every later
// applied one (about k²/2 calls); ApplyOwed replays each once.
func TestApplyOwedReplaysLessThanApplyOneByOne(t *testing.T) {
	ctx := context.Background()
	const k = 20
	var applied, owed []catalog.Operation
	for i := range k {
		applied = append(applied, op(fmt.Sprintf("a%02d", i), int64(10+2*i), "paris", "PATCH", fmt.Sprintf(`{"a":%d,"last":"a%d"}`, i, i)))
		owed = append(owed, op(fmt.Sprintf("b%02d", i), int64(11+2*i), "berlin", "PATCH", fmt.Sprintf(`{"b":%d,"last":"b%d"}`, i, i)))
	}
	run := func(batch bool) (string, int) {
		app := newMemApp()
		x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
		x.Apply(ctx, createJob())
		for _, o := range applied {
			x.Apply(ctx, Job{Op: o, Service: "posts"})
		}
		before := app.calls
		if batch {
			jobs := make([]Job, len(owed))
			for i, o := range owed {
				jobs[i] = Job{Op: o, Service: "posts", Owed: true}
			}
			x.ApplyOwed(ctx, jobs)
		} else {
			for _, o := range owed {
				x.Apply(ctx, Job{Op: o, Service: "posts", Owed: true})
			}
		}
		return app.state(), app.calls - before
	}
	one, oneCalls := run(false)
	batch, batchCalls := run(true)
	if one != batch {
		t.Fatalf("one by one ends in %s, ApplyOwed in %s", one, batch)
	}
	if want := reference(t, append(slices.Clone(applied), owed...)); batch != want {
		t.Fatalf("ApplyOwed ends in %s, the catalog's order gives %s", batch, want)
	}
	if batchCalls > 2*k {
		t.Fatalf("ApplyOwed made %d calls for %d late and %d applied operations", batchCalls, k, k)
	}
	t.Logf("calls: one by one %d, ApplyOwed %d", oneCalls, batchCalls)
}

// TestLoneCreateThenTheRestOfTheJournal: a lone create reads only its
// own entry and the local id (loadFor); the next operation on the
// resource sees everything an earlier run journaled, here a later
// replace that supersedes it.
func TestLoneCreateThenTheRestOfTheJournal(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	app := newMemApp()
	app.Call(ctx, "posts", http.MethodPost, "/posts", nil, []byte(`{"t":"v2"}`))
	// An earlier run: the resource is here (local id 1) with a replace
	// applied at time 30.
	later := op("op2", 30, "paris", http.MethodPut, `{"t":"v2"}`)
	if err := store.Put(ctx, localKey(gid), []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := (journal{store: store}).put(ctx, opEntryKey(gid, later.ID), &entry{Op: later, State: stateDone, Status: 200, Outcome: "200", LocalID: "1"}, false); err != nil {
		t.Fatal(err)
	}
	x := newExecutor(t, app, store)
	if r := x.Apply(ctx, createJob()); !r.OK() || r.LocalID != "1" {
		t.Fatalf("create of a resource held here: %+v", r)
	}
	r := x.Apply(ctx, Job{Op: op("op1", 20, "berlin", http.MethodPut, `{"t":"v1"}`), Service: "posts"})
	if !strings.HasPrefix(r.Outcome, catalog.SupersededPrefix) {
		t.Fatalf("a replace before an applied one: %+v, want superseded", r)
	}
	if got := app.state(); !strings.Contains(got, `"v2"`) {
		t.Fatalf("application holds %s, want v2", got)
	}
}

// TestOwedSupersededIsNotReadBack: a superseded operation is not run;
// a client sending it gets the resource as it stands, read from the
// application, but an owed one (catch-up) has no client: the
// application is not called at all.
func TestOwedSupersededIsNotReadBack(t *testing.T) {
	app := newMemApp()
	x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
	ctx := context.Background()
	if r := x.Apply(ctx, createJob()); !r.OK() {
		t.Fatalf("create: %+v", r)
	}
	if r := x.Apply(ctx, Job{Op: op("later", 30, "paris", "PUT", `{"t":"later"}`), Service: "posts"}); !r.OK() {
		t.Fatalf("later replace: %+v", r)
	}
	before := app.calls
	r := x.ApplyOwed(ctx, []Job{{Op: op("early", 20, "berlin", "PUT", `{"t":"early"}`), Service: "posts", Owed: true}})[0]
	if !r.OK() || !strings.HasPrefix(r.Outcome, catalog.SupersededPrefix) {
		t.Fatalf("early replace owed: %+v, want superseded", r)
	}
	if n := app.calls - before; n != 0 {
		t.Fatalf("the superseded owed operation made %d calls to the application, want none", n)
	}
	if got := app.state(); !strings.Contains(got, `"later"`) {
		t.Fatalf("application holds %s, want the later replace", got)
	}
}

// readCounter counts the point reads and scans of a datastore.
type readCounter struct {
	ds.Batching
	mu    sync.Mutex
	reads int
}

func (c *readCounter) Get(ctx context.Context, k ds.Key) ([]byte, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Batching.Get(ctx, k)
}

func (c *readCounter) Query(ctx context.Context, q query.Query) (query.Results, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Batching.Query(ctx, q)
}

func (c *readCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// TestFreshCreateReadsNothing: a Fresh create (a resource minted for the
// request) reads nothing from the journal, runs once, and what it
// journaled is what the next operations see, in this process (the same
// create delivered again, by catch-up, is a duplicate) and in the next
// one (the full load finds its local id).
func TestFreshCreateReadsNothing(t *testing.T) {
	ctx := context.Background()
	store := &readCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	app := newMemApp()
	x := newExecutor(t, app, store)
	j := createJob()
	j.Fresh = true
	if r := x.Apply(ctx, j); !r.OK() || r.LocalID != "1" {
		t.Fatalf("fresh create: %+v", r)
	}
	if n := store.count(); n != 0 {
		t.Fatalf("a fresh create read the journal %d times, want 0", n)
	}
	again := createJob()
	again.Owed = true
	if r := x.ApplyOwed(ctx, []Job{again})[0]; !r.Duplicate {
		t.Fatalf("the create delivered again by catch-up: %+v, want a duplicate", r)
	}
	if r := x.Apply(ctx, j); !r.Duplicate {
		t.Fatalf("the fresh create delivered again: %+v, want a duplicate", r)
	}
	if r := x.Apply(ctx, Job{Op: op("op1", 20, "berlin", http.MethodPatch, `{"u":1}`), Service: "posts"}); !r.OK() {
		t.Fatalf("update after the fresh create: %+v", r)
	}
	if app.calls != 2 {
		t.Fatalf("%d calls to the application, want 2 (the create, the update)", app.calls)
	}
	// The next run reads the journal the fresh create wrote.
	y := newExecutor(t, app, store)
	if r := y.Apply(ctx, createJob()); !r.Duplicate || r.LocalID != "1" {
		t.Fatalf("the create after a restart: %+v, want a duplicate with local id 1", r)
	}
	if r := y.Apply(ctx, Job{Op: op("op2", 30, "paris", http.MethodPatch, `{"v":2}`), Service: "posts"}); !r.OK() {
		t.Fatalf("update after a restart: %+v", r)
	}
	if got := app.state(); !strings.Contains(got, `"u":1`) || !strings.Contains(got, `"v":2`) {
		t.Fatalf("application holds %s, want both updates", got)
	}
	if app.calls != 3 {
		t.Fatalf("%d calls to the application, want 3", app.calls)
	}
}

// syncCounter counts a datastore's syncs.
type syncCounter struct {
	ds.Batching
	mu    sync.Mutex
	syncs int
}

func (c *syncCounter) Sync(ctx context.Context, k ds.Key) error {
	c.mu.Lock()
	c.syncs++
	c.mu.Unlock()
	return c.Batching.Sync(ctx, k)
}

// TestIntendAndBeginSyncsOnce: at a create's origin, the intent and the
// local execution's begun entry are one synced write, and a crash right
// after it leaves the intent and a maybe-executed create, as two writes
// did (the next run looks for the item before running it again).
func TestIntendAndBeginSyncsOnce(t *testing.T) {
	ctx := context.Background()
	store := &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	app := newMemApp()
	x := newExecutor(t, app, store)
	j := createJob()
	j.Fresh = true
	local, err := x.IntendAndBegin(ctx, Intent{Op: j.Op}, j)
	if err != nil {
		t.Fatal(err)
	}
	if r := x.Apply(ctx, local); !r.OK() || r.LocalID != "1" {
		t.Fatalf("create: %+v", r)
	}
	if store.syncs != 1 {
		t.Fatalf("%d syncs for the intent and the create, want 1", store.syncs)
	}
	if ins, err := x.Intents(ctx); err != nil || len(ins) != 1 || ins[0].Op.ID != j.Op.ID {
		t.Fatalf("intents %+v, %v: want the create's", ins, err)
	}

	// A crash after the intent, before the application was called: the
	// next run does not know whether the create ran, and looks first.
	app = newMemApp()
	crashed := &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	x = newExecutor(t, app, crashed)
	if _, err := x.IntendAndBegin(ctx, Intent{Op: j.Op}, j); err != nil {
		t.Fatal(err)
	}
	y := newExecutor(t, app, crashed)
	if _, ran, err := y.Applied(ctx, gid, j.Op.ID); err != nil || ran {
		t.Fatalf("after the crash: ran %v, %v; want not run", ran, err)
	}
	owed := createJob()
	owed.Owed = true
	if r := y.ApplyOwed(ctx, []Job{owed})[0]; !r.OK() || r.LocalID != "1" {
		t.Fatalf("the owed create after the crash: %+v", r)
	}
	if app.calls != 2 { // the look-up, the create
		t.Fatalf("%d calls to the application, want 2 (a look-up, then the create)", app.calls)
	}
	// Anything but a fresh create is a plain intent.
	upd := Job{Op: op("op1", 20, "berlin", http.MethodPatch, `{"u":1}`), Service: "posts"}
	before := crashed.syncs
	got, err := y.IntendAndBegin(ctx, Intent{Op: upd.Op}, upd)
	if err != nil || !got.begun.IsZero() || crashed.syncs != before+1 {
		t.Fatalf("an update's intent: begun %v, %d syncs, %v", got.begun, crashed.syncs-before, err)
	}
}

// TestJournalKeysAsCleaned: the journal's keys of catalog ids, built
// without cleaning, are the keys ChildString built (an earlier run's
// journal is read with them).
func TestJournalKeysAsCleaned(t *testing.T) {
	for _, id := range []string{catalog.NewID(time.Now()), "op0", "x/../y", ""} {
		res := catalog.NewID(time.Now())
		cleaned := []ds.Key{journalRoot.ChildString("r").ChildString(id), journalRoot.ChildString("r").ChildString(res).ChildString("op").ChildString(id),
			journalRoot.ChildString("r").ChildString(id).ChildString("local"), journalRoot.ChildString("publish").ChildString(id)}
		for i, k := range []ds.Key{resourceKey(id), opEntryKey(res, id), localKey(id), publishKey(id)} {
			if k != cleaned[i] {
				t.Errorf("key %d of %q: %q, want %q", i, id, k, cleaned[i])
			}
		}
	}
}

// ownedCreate is the owed creating operation of resource res.
func ownedCreate(res, body string) Job {
	c := catalog.Operation{ID: res + "C", Resource: res, Origin: "paris", At: catalog.Timestamp{Wall: 1}, Method: http.MethodPost, Path: "/posts", Body: []byte(body)}
	return Job{Op: c, Service: "posts", Create: true, Collection: "/posts", Owed: true}
}

// TestBeginOwedSharesOneSync: owed creates begun ahead together cost one
// sync between them, run without a look-up or another sync; after a crash
// between the shared sync and their calls, each is looked for before it
// runs, so none is made twice: the one whose call had made the item
// adopts it, the others are made once.
func TestBeginOwedSharesOneSync(t *testing.T) {
	ctx := context.Background()
	jobs := []Job{ownedCreate("R1", `{"t":"a"}`), ownedCreate("R2", `{"t":"b"}`), ownedCreate("R3", `{"t":"c"}`)}
	store := &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	app := newMemApp()
	x := newExecutor(t, app, store)
	x.BeginOwed(ctx, jobs)
	if store.syncs != 1 {
		t.Fatalf("%d syncs to begin 3 creates, want 1", store.syncs)
	}
	for _, j := range jobs {
		if r := x.ApplyOwed(ctx, []Job{j})[0]; !r.OK() || r.Duplicate {
			t.Fatalf("%s: %+v", j.Op.Resource, r)
		}
	}
	if store.syncs != 1 || app.calls != 3 || len(app.items) != 3 {
		t.Fatalf("%d syncs, %d calls, %d items; want 1 sync, the 3 creates alone", store.syncs, app.calls, len(app.items))
	}
	// Begun again (a second delivery), nothing is journaled: they ran.
	x.BeginOwed(ctx, jobs)
	if store.syncs != 1 {
		t.Fatalf("begun again after they ran: %d syncs, want none more", store.syncs-1)
	}

	// A crash after the shared sync, once the first create had made its
	// item but before its outcome was journaled.
	store = &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	app = newMemApp()
	newExecutor(t, app, store).BeginOwed(ctx, jobs)
	app.Call(ctx, "posts", http.MethodPost, "/posts", nil, jobs[0].Op.Body)
	y := newExecutor(t, app, store)
	for _, j := range jobs {
		if r := y.ApplyOwed(ctx, []Job{j})[0]; !r.OK() {
			t.Fatalf("%s after the crash: %+v", j.Op.Resource, r)
		}
	}
	if len(app.items) != 3 || app.calls != 1+3+2 { // the first create; a look-up each; the two others
		t.Fatalf("after the crash: %d items, %d calls; want 3 items, 6 calls", len(app.items), app.calls)
	}
}
