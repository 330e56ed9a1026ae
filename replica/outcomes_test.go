package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"

	"cheops/catalog"
)

// storedEntry reads an operation's entry from the journal's store itself,
// not through the outbox (nil when the store has none).
func storedEntry(t *testing.T, store ds.Datastore, res, op string) *entry {
	t.Helper()
	data, err := store.Get(context.Background(), opEntryKey(res, op))
	if errors.Is(err, ds.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var e entry
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatal(err)
	}
	return &e
}

// TestOwedOutcomesJournaledInBatches: the outcomes of owed operations are
// journaled together, and always before the catalog records them: every
// outcome the catalog shows is done in the journal's store. A crash
// between two batches (the outcomes held, not yet written) loses none
// that the catalog shows and runs nothing twice: at the next start each
// create of the lost batch is found in the application and adopted, each
// update runs again (idempotent), and the application ends with one item
// per resource, in the state of the catalog's order.
func TestOwedOutcomesJournaledInBatches(t *testing.T) {
	ctx := context.Background()
	const n = 30
	app := &callLog{memApp: newMemApp()}
	cat, err := catalog.New(ctx, catalog.Config{Store: &memStore{kv: map[string][]byte{}}, Self: "rome", AuditInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	store := &syncCounter{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	x := newExecutor(t, app, store)
	var ids []string
	for i := range n {
		id := catalog.NewID(time.Unix(1000+int64(i), 0))
		ids = append(ids, id)
		owe(t, cat, id, fmt.Sprintf("r%d", i), i%3)
	}

	// A crash between batches: the first ten resources run as the runner
	// runs them, their outcomes held for the next batch, never written.
	for _, id := range ids[:10] {
		res, err := cat.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		jobs, _ := owedJobs(res, "rome", nil)
		for i := range jobs {
			jobs[i].outcomeLater = true
		}
		for k, r := range x.ApplyOwed(ctx, jobs) {
			if !r.OK() {
				t.Fatalf("%s: %+v", jobs[k].Op.ID, r)
			}
			if e := storedEntry(t, store, id, jobs[k].Op.ID); e != nil && e.State == stateDone {
				t.Fatalf("%s: its outcome journaled before its batch", jobs[k].Op.ID)
			}
			if r, ok, err := x.Applied(ctx, id, jobs[k].Op.ID); err != nil || !ok || !r.OK() {
				t.Fatalf("%s: this process does not see its own held outcome: %+v %v %v", jobs[k].Op.ID, r, ok, err)
			}
		}
	}
	made := len(app.items)
	if made != 10 {
		t.Fatalf("%d items after the first ten resources, want 10", made)
	}
	// The crash: the outbox is lost with the process.
	y := newExecutor(t, app, store)
	r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: y, Workers: 4, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	waitNothingOwed(t, cat, app)
	// Every outcome the catalog shows is done in the journal's store, not
	// only held: the batch is written before the catalog is.
	for _, id := range ids {
		res, err := cat.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range res.Operations {
			if out := res.PerSite["rome"]; len(out.Pending) > 0 || len(out.Failed) > 0 {
				t.Fatalf("%s at rome: %+v", id, out)
			}
			if e := storedEntry(t, store, id, op.ID); e == nil || e.State != stateDone {
				t.Fatalf("%s is recorded in the catalog, journaled %+v", op.ID, e)
			}
		}
	}
	r.Close()
	if got := len(app.items); got != n {
		t.Fatalf("the application holds %d items, want %d: a create ran twice or not at all", got, n)
	}
	// Every resource in the state of its last update.
	for i, id := range ids {
		local := ""
		if res, err := cat.Get(ctx, id); err == nil {
			local = res.PerSite["rome"].LocalID
		}
		item := app.items[local]
		want := i%3 - 1 // the last update's n
		if got, ok := item["n"]; want >= 0 && (!ok || int(got.(float64)) != want) || want < 0 && ok {
			t.Fatalf("resource %d (local %q): %v, want n=%d", i, local, item, want)
		}
	}
}

// TestCommutingOutcomeJournaledAtOnce: the outcome of an owed commuting
// operation, which must not run twice, is journaled as it was before:
// at once, never held for a batch (a crash would make it run again).
func TestCommutingOutcomeJournaledAtOnce(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	x := newExecutor(t, newMemApp(), store)
	create := ownedCreate("R1", `{"t":"a"}`)
	create.outcomeLater = true
	add := Job{Op: catalog.Operation{ID: "R1A", Resource: "R1", Origin: "paris", At: catalog.Timestamp{Wall: 2}, Method: http.MethodPatch,
		Policy: catalog.PolicyCommute, Path: "/posts/R1", Body: []byte(`{"n":1}`)}, Service: "posts", Owed: true, outcomeLater: true}
	for _, r := range x.ApplyOwed(ctx, []Job{create, add}) {
		if !r.OK() {
			t.Fatalf("%+v", r)
		}
	}
	if e := storedEntry(t, store, "R1", "R1C"); e != nil && e.State == stateDone {
		t.Fatalf("the create's outcome was written at once, want it held for the batch")
	}
	if e := storedEntry(t, store, "R1", "R1A"); e == nil || e.State != stateDone {
		t.Fatalf("the commuting operation's outcome: %+v, want done in the store", e)
	}
	if err := x.flushOutcomes(ctx); err != nil {
		t.Fatal(err)
	}
	if e := storedEntry(t, store, "R1", "R1C"); e == nil || e.State != stateDone || e.LocalID == "" {
		t.Fatalf("the create's outcome after the batch: %+v", e)
	}
}
