package replica

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	dto "github.com/prometheus/client_model/go"

	"cheops/catalog"
	"cheops/internal/testkit"
)

// TestDrainDoesNotWaitForAnEndlessBurst: a returning site's catalog fills
// up with a change every millisecond or so for as long as it syncs; the
// runner must start on what it has rather than wait for the burst to end
// (which, here, it never does).
func TestDrainDoesNotWaitForAnEndlessBurst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	feed := make(chan catalog.Change)
	go func() {
		for i := 0; ; i++ {
			select {
			case feed <- catalog.Change{ID: fmt.Sprintf("r%d", i)}:
			case <-ctx.Done():
				return
			}
		}
	}()
	ids, all, ok := drain(ctx, feed, catalog.Change{ID: "first"}, 5*time.Millisecond, 20*time.Millisecond)
	if !ok || all {
		t.Fatalf("drain: ok=%v all=%v", ok, all)
	}
	if !ids["first"] {
		t.Fatalf("drain collected %v, want the first change among them", ids)
	}
}

// TestDrainReportsAResync: a resync means look at everything.
func TestDrainReportsAResync(t *testing.T) {
	feed := make(chan catalog.Change, 1)
	feed <- catalog.Change{Kind: catalog.KindResync}
	_, all, ok := drain(context.Background(), feed, catalog.Change{ID: "a"}, time.Millisecond, time.Second)
	if !ok || !all {
		t.Fatalf("drain: ok=%v all=%v, want a resync", ok, all)
	}
}

// TestOutcomesWaitForAPauseOrTheMaximumDelay: a batch is written once no
// outcome came for the quiet time, or once its first waited the maximum
// delay while more kept coming (a catch-up): never empty.
func TestOutcomesWaitForAPauseOrTheMaximumDelay(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	b := &outcomeBatch{}
	if b.due(t0, 10*ms, 100*ms) {
		t.Fatal("an empty batch is due")
	}
	b.outs, b.first, b.last = make([]catalog.Outcome, 3), t0, t0.Add(95*ms)
	for _, c := range []struct {
		now  time.Duration
		want bool
	}{{96, false}, {99, false}, {100, true}, {105, true}} {
		if got := b.due(t0.Add(c.now*ms), 10*ms, 100*ms); got != c.want {
			t.Errorf("at %d ms: due = %v, want %v", c.now, got, c.want)
		}
	}
	b.first = t0.Add(90 * ms) // a single outcome: written after the quiet time
	if b.due(t0.Add(100*ms), 10*ms, 100*ms) || !b.due(t0.Add(105*ms), 10*ms, 100*ms) {
		t.Error("a lone outcome is not written after the quiet time")
	}
}

// TestOwedJobsWaitForTheCreation: a view holding the meta and later
// operations but not yet the creation (merged from the DAG's heads down)
// gives no job, so that an update is never run as the create; once the
// creation is there, the owed operations come in order with the first as
// the create.
func TestOwedJobsWaitForTheCreation(t *testing.T) {
	create := op("c0", 1, "paris", "POST", `{"t":"v1"}`)
	v2 := op("u2", 2, "paris", "PUT", `{"t":"v2"}`)
	v3 := op("u3", 3, "paris", "PUT", `{"t":"v3"}`)
	res := catalog.Resource{ID: gid, Service: "posts", Collection: "/posts", CreateOp: "c0",
		Operations: []catalog.Operation{v2, v3},
		PerSite:    map[string]catalog.SiteView{"rome": {Pending: []string{"c0", "u2", "u3"}}}}
	if jobs, ok := owedJobs(res, "rome", nil); ok || len(jobs) != 0 {
		t.Fatalf("without the creation: %d jobs, ok=%v; want none", len(jobs), ok)
	}
	res.Operations = []catalog.Operation{create, v2, v3}
	jobs, ok := owedJobs(res, "rome", nil)
	if !ok || len(jobs) != 3 || !jobs[0].Create || jobs[1].Create || jobs[2].Op.ID != "u3" {
		t.Fatalf("with the creation: ok=%v jobs %+v", ok, jobs)
	}
	// A meta written before CreateOp existed: the first operation is the
	// creation, as before.
	res.CreateOp = ""
	if jobs, ok := owedJobs(res, "rome", nil); !ok || !jobs[0].Create {
		t.Fatalf("old meta: ok=%v jobs %+v", ok, jobs)
	}
}

// memStore is an in-memory catalog.Store: one site's view, nothing
// replicated.
type memStore struct {
	mu       sync.Mutex
	kv       map[string][]byte
	watchers []func([]string, string, []byte, bool)
}

func (s *memStore) Put(ctx context.Context, sites []string, key string, value []byte) error {
	return s.PutBatch(ctx, sites, []string{key}, [][]byte{value})
}

func (s *memStore) PutBatch(_ context.Context, sites []string, keys []string, values [][]byte) error {
	s.mu.Lock()
	for i, k := range keys {
		s.kv[strings.Join(sites, ",")+"|"+k] = values[i]
	}
	fns := slices.Clone(s.watchers)
	s.mu.Unlock()
	for i, k := range keys {
		for _, fn := range fns {
			fn(sites, k, values[i], false)
		}
	}
	return nil
}

func (s *memStore) Get(_ context.Context, sites []string, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[strings.Join(sites, ",")+"|"+key]
	return v, ok, nil
}

func (s *memStore) Delete(_ context.Context, sites []string, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.kv, strings.Join(sites, ",")+"|"+key)
	return nil
}

func (s *memStore) Scan(context.Context, string, func([]string, string, []byte) error) error {
	return nil // always starts empty
}

func (s *memStore) Watch(fn func([]string, string, []byte, bool)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = append(s.watchers, fn)
	return func() {}
}

// callLog is a memApp that logs the bodies it is sent and can fail the
// first calls as an application that cannot be reached.
type callLog struct {
	*memApp
	mu     sync.Mutex
	bodies []string
	fail   int           // calls left to fail
	gate   chan struct{} // when not nil, calls wait for it to close
	// entered, when not nil, receives each call's body as it comes
	// (before the gate).
	entered chan string
}

func (a *callLog) Call(ctx context.Context, svc, method, path string, h http.Header, body []byte) (Answer, error) {
	if a.entered != nil {
		a.entered <- string(body)
	}
	if a.gate != nil {
		<-a.gate
	}
	a.mu.Lock()
	if a.fail > 0 {
		a.fail--
		a.mu.Unlock()
		return Answer{}, errors.New("connection reset by peer")
	}
	a.bodies = append(a.bodies, string(body))
	a.mu.Unlock()
	return a.memApp.Call(ctx, svc, method, path, h, body)
}

func (a *callLog) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.bodies)
}

// owedHere is a catalog at rome holding resources created at paris and
// pending at rome, and an executor over app.
func owedHere(t testing.TB, app App) (*catalog.Catalog, *Executor) {
	t.Helper()
	cat, err := catalog.New(context.Background(), catalog.Config{Store: &memStore{kv: map[string][]byte{}}, Self: "rome", AuditInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	x, err := NewExecutor(Config{App: app, Journal: dssync.MutexWrap(ds.NewMapDatastore())})
	if err != nil {
		t.Fatal(err)
	}
	return cat, x
}

// oweSingles makes n resources owed here, each its creation alone,
// created at seconds 1000, 1001... (the catalog's order).
func oweSingles(t testing.TB, cat *catalog.Catalog, n int) {
	t.Helper()
	for i := range n {
		owe(t, cat, catalog.NewID(time.Unix(1000+int64(i), 0)), fmt.Sprintf("single%d", i), 0)
	}
}

// owe records at rome a resource created at paris with n updates after
// its creation, every operation pending at rome.
func owe(t testing.TB, cat *catalog.Catalog, id, name string, updates int) {
	t.Helper()
	create := owedOp(id, id+"C", `{"name":"`+name+`"}`, http.MethodPost, "/posts")
	if err := cat.Create(context.Background(), catalog.Meta{ID: id, Service: "posts", Scope: "{posts: paris & rome}", Sites: create.Targets,
		Collection: "/posts", Origin: "paris", CreateOp: create.ID}, create); err != nil {
		t.Fatal(err)
	}
	for i := range updates {
		oweUpdate(t, cat, id, name, i)
	}
}

// oweUpdate records the ith update of a resource, pending at rome.
func oweUpdate(t testing.TB, cat *catalog.Catalog, id, name string, i int) {
	t.Helper()
	u := owedOp(id, fmt.Sprintf("%sU%d", id, i), fmt.Sprintf(`{"name":"%s","n":%d}`, name, i), http.MethodPatch, "/posts/"+id)
	if err := cat.AppendOp(context.Background(), u); err != nil {
		t.Fatal(err)
	}
}

func owedOp(res, id, body, method, path string) catalog.Operation {
	return catalog.Operation{ID: id, Resource: res, Method: method, Path: path, Body: []byte(body), Targets: []string{"paris", "rome"},
		Outcomes: map[string]string{"paris": "200", "rome": catalog.OutcomePending}}
}

// TestLongestChainFirst: one resource's operations run one after the
// other, so a catch-up lasts at least as long as its longest chain; the
// runner starts the resource with the most owed operations first, not in
// the catalog's order (where, here, it comes last).
func TestLongestChainFirst(t *testing.T) {
	app := &callLog{memApp: newMemApp(), gate: make(chan struct{})}
	cat, x := owedHere(t, app)
	oweSingles(t, cat, 10)
	chain := catalog.NewID(time.Unix(2000, 0))
	owe(t, cat, chain, "chain", 5) // last in the catalog's order
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Workers: 1, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	release := sync.OnceFunc(func() { close(app.gate) })
	defer release() // before Close, which waits for the worker
	// The worker holds the first resource it took (with the singles it
	// took beside it, up to maxBegin) until the chain is queued too (or
	// taken, if it was queued first).
	testkit.Eventually(t, 10*time.Second, "the chain queued", func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if t := r.tasks[chain]; t == nil {
			return fmt.Errorf("the chain is not queued")
		}
		return nil
	})
	release()
	testkit.Eventually(t, 10*time.Second, "every owed operation run", func() error {
		if n := len(app.calls()); n < 16 {
			return fmt.Errorf("%d calls of 16", n)
		}
		return nil
	})
	calls := app.calls()
	first := slices.IndexFunc(calls, func(b string) bool { return strings.Contains(b, "chain") })
	// The first resource taken may be a single (the worker starts as the
	// first resources are found); the chain comes next.
	if first > 1 {
		t.Fatalf("the chain of 6 ran after %d single creates: %v", first, calls)
	}
}

// TestRunsAgainOnlyForNewWork: a change to a resource while its worker
// runs it makes the worker go on with it only when it brings an
// operation owed here that the worker does not run: a write already
// applied here does not (a catalog Get and a pass for nothing), an owed
// update does, and runs without waiting for a rescan.
func TestRunsAgainOnlyForNewWork(t *testing.T) {
	app := &callLog{memApp: newMemApp(), gate: make(chan struct{}), entered: make(chan string, 4)}
	cat, x := owedHere(t, app)
	id := catalog.NewID(time.Unix(1000, 0))
	owe(t, cat, id, "one", 0)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Workers: 1, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	release := sync.OnceFunc(func() { close(app.gate) })
	defer release() // before Close, which waits for the worker
	if body := <-app.entered; !strings.Contains(body, "one") {
		t.Fatalf("the first call sent %s, want the create", body)
	}
	// The create is at the application. offer is called here as the
	// runner's watcher calls it for each change (the watcher may call
	// it too: the same answer).
	again := func() bool {
		res, err := cat.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		r.offer(res)
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.tasks[id].again
	}
	done := owedOp(id, id+"L", `{"name":"live"}`, http.MethodPatch, "/posts/"+id)
	done.Outcomes["rome"] = "200" // a live write, applied here already
	if err := cat.AppendOp(context.Background(), done); err != nil {
		t.Fatal(err)
	}
	if again() {
		t.Fatal("a write applied here already marks the running resource to run again")
	}
	oweUpdate(t, cat, id, "one", 0)
	if !again() {
		t.Fatal("an owed update does not mark the running resource to run again")
	}
	release()
	waitNothingOwed(t, cat, app)
	if calls := app.calls(); len(calls) != 2 || !strings.Contains(calls[1], `"n":0`) {
		t.Fatalf("calls %v, want the create then the update", calls)
	}
}

// stepApp is a memApp whose calls the test lets through one by one: each
// call sends its body on entered and waits for proceed (or the end of its
// context).
type stepApp struct {
	*memApp
	entered chan string
	proceed chan struct{}
}

func (a *stepApp) Call(ctx context.Context, svc, method, path string, h http.Header, body []byte) (Answer, error) {
	select {
	case a.entered <- string(body):
	case <-ctx.Done():
		return Answer{}, ctx.Err()
	}
	select {
	case <-a.proceed:
	case <-ctx.Done():
		return Answer{}, ctx.Err()
	}
	return a.memApp.Call(ctx, svc, method, path, h, body)
}

// next waits for the application's next call and returns its body.
func (a *stepApp) next(t *testing.T) string {
	t.Helper()
	select {
	case b := <-a.entered:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no call to the application within 10 s")
		return ""
	}
}

// TestGiveBackLetsALongerChainFirst: a worker that took several single
// creates together (their creates begun in one write) and runs the first
// of them gives the rest back when a resource with more owed operations
// was queued meanwhile, so that the chain runs next and not after them.
// Deterministic: the application lets each call through when the test
// says, and the chain is queued (with its six owed operations) while the
// worker is held in a call with singles left in its share.
func TestGiveBackLetsALongerChainFirst(t *testing.T) {
	app := &stepApp{memApp: newMemApp(), entered: make(chan string), proceed: make(chan struct{})}
	cat, x := owedHere(t, app)
	const singles = 10
	oweSingles(t, cat, singles)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Workers: 1, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	state := func() (busy, queued int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.busy, len(r.ready)
	}
	calls := 0
	// Until the worker holds, beside the create it runs, singles it took
	// with it (its first take may have found only the first resource
	// queued: that one is let through once every single is queued).
	for {
		if b := app.next(t); !strings.Contains(b, "single") {
			t.Fatalf("call %s, want a single create", b)
		}
		calls++
		testkit.Eventually(t, 10*time.Second, "every single queued or taken", func() error {
			if busy, queued := state(); busy+queued+calls-1 != singles {
				return fmt.Errorf("%d taken, %d queued, %d run of %d", busy, queued, calls-1, singles)
			}
			return nil
		})
		if busy, _ := state(); busy >= 2 {
			break
		}
		app.proceed <- struct{}{}
	}
	chain := catalog.NewID(time.Unix(2000, 0))
	owe(t, cat, chain, "chain", 5)
	testkit.Eventually(t, 10*time.Second, "the chain queued with its 6 owed operations", func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if c := r.tasks[chain]; c == nil || !c.queued || c.owed != 6 {
			return fmt.Errorf("the chain is not queued with 6 owed operations: %+v", c)
		}
		return nil
	})
	app.proceed <- struct{}{}
	if b := app.next(t); !strings.Contains(b, "chain") {
		t.Fatalf("after the single the worker was running came %s, want the chain's create (singles were left in the worker's share)", b)
	}
	app.proceed <- struct{}{}
	for calls += 1; calls < singles+6; calls++ {
		app.next(t)
		app.proceed <- struct{}{}
	}
	testkit.Eventually(t, 10*time.Second, "every owed operation recorded", func() error {
		if owing := cat.Owing(); len(owing) > 0 {
			return fmt.Errorf("rome still owes on %v", owing)
		}
		return nil
	})
	if got := len(app.items); got != singles+1 {
		t.Fatalf("the application holds %d items, want %d", got, singles+1)
	}
}

// TestTransientFailureRetriedWithoutARescan: an operation that failed for
// want of an answer (a connection the application closed) runs again at
// once, not at the next rescan.
func TestTransientFailureRetriedWithoutARescan(t *testing.T) {
	app := &callLog{memApp: newMemApp(), fail: 1}
	cat, x := owedHere(t, app)
	owe(t, cat, catalog.NewID(time.Unix(1000, 0)), "retry", 1)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	waitNothingOwed(t, cat, app)
	// The create, not known to have run, is looked for first (a GET).
	writes := slices.DeleteFunc(app.calls(), func(b string) bool { return b == "" })
	if len(writes) != 2 {
		t.Fatalf("writes %v, want the create and the update once each", writes)
	}
}

// TestOwedOperationsWaitForTheMerge: while the store reports a merge in
// progress (after a heal, the other side's blocks), the owed operations
// wait, and run as soon as it ends.
func TestOwedOperationsWaitForTheMerge(t *testing.T) {
	app := &callLog{memApp: newMemApp()}
	cat, x := owedHere(t, app)
	var merging atomic.Bool
	merging.Store(true)
	owe(t, cat, catalog.NewID(time.Unix(1000, 0)), "held", 1)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Rescan: time.Hour, Merging: merging.Load, MaxHold: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	testkit.Eventually(t, 5*time.Second, "the runner holding", func() error {
		if !r.holding() {
			return errors.New("not holding")
		}
		return nil
	})
	// Held: a worker took the resource, and polls the merge a few
	// times without running anything.
	for range 10 {
		time.Sleep(holdPoll)
		if calls := app.calls(); len(calls) > 0 {
			t.Fatalf("owed operations ran during the merge: %v", calls)
		}
	}
	merging.Store(false)
	waitNothingOwed(t, cat, app)
}

// TestHoldIsBounded: a merge that never ends holds the owed operations
// MaxHold, not longer; then they run while it goes on.
func TestHoldIsBounded(t *testing.T) {
	app := &callLog{memApp: newMemApp()}
	cat, x := owedHere(t, app)
	owe(t, cat, catalog.NewID(time.Unix(1000, 0)), "first", 1)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Rescan: time.Hour,
		Merging: func() bool { return true }, MaxHold: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	waitNothingOwed(t, cat, app)
	// The bound spent, more owed operations run at once: the hold
	// comes back only once the merge ended.
	owe(t, cat, catalog.NewID(time.Unix(2000, 0)), "second", 1)
	testkit.Eventually(t, 5*time.Second, "the second resource's operations recorded", func() error {
		if owing := cat.Owing(); len(owing) > 0 {
			return fmt.Errorf("rome still owes on %v", owing)
		}
		if r.holding() {
			return errors.New("holding again")
		}
		return nil
	})
}

// waitNothingOwed waits until the catalog shows no operation owed here.
func waitNothingOwed(t *testing.T, cat *catalog.Catalog, app *callLog) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "the owed operations recorded", func() error {
		if owing := cat.Owing(); len(owing) > 0 {
			return fmt.Errorf("rome still owes on %v (calls %v)", owing, app.calls())
		}
		return nil
	})
}

// holding reports whether the runner's workers are held now.
func (r *Runner) holding() bool {
	r.hold.mu.Lock()
	defer r.hold.mu.Unlock()
	return !r.hold.since.IsZero() && !r.hold.spent
}

// TestLoneCreatesBegunTogether: a catch-up of many resources with one
// owed create each shares its syncs among creates (Executor.BeginOwed),
// and makes every item once.
func TestLoneCreatesBegunTogether(t *testing.T) {
	app := &callLog{memApp: newMemApp(), gate: make(chan struct{})}
	cat, err := catalog.New(context.Background(), catalog.Config{Store: &memStore{kv: map[string][]byte{}}, Self: "rome", AuditInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	store := &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	x, err := NewExecutor(Config{App: app, Journal: store})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	oweSingles(t, cat, n)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x, Workers: 2, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	release := sync.OnceFunc(func() { close(app.gate) })
	defer release() // before Close, which waits for the workers
	// Everything queued but what the two workers took (at most maxBegin
	// each), held at the application.
	testkit.Eventually(t, 10*time.Second, "the owed resources queued", func() error {
		var m dto.Metric
		if err := x.queued.Write(&m); err != nil {
			return err
		}
		if q := m.GetGauge().GetValue(); q < n-2*maxBegin {
			return fmt.Errorf("%v operations queued", q)
		}
		return nil
	})
	release()
	waitNothingOwed(t, cat, app)
	if got := len(app.items); got != n {
		t.Fatalf("the application holds %d items, want %d", got, n)
	}
	store.mu.Lock()
	syncs := store.syncs
	store.mu.Unlock()
	if syncs > n/2 {
		t.Fatalf("%d syncs for %d owed creates, want at most %d", syncs, n, n/2)
	}
	t.Logf("%d syncs for %d owed creates", syncs, n)
}
