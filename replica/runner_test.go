package replica

import (
	"context"
	"fmt"
	"testing"
	"time"

	"cheops/catalog"
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
	if jobs, ok := owedJobs(res, "rome"); ok || len(jobs) != 0 {
		t.Fatalf("without the creation: %d jobs, ok=%v; want none", len(jobs), ok)
	}
	res.Operations = []catalog.Operation{create, v2, v3}
	jobs, ok := owedJobs(res, "rome")
	if !ok || len(jobs) != 3 || !jobs[0].Create || jobs[1].Create || jobs[2].Op.ID != "u3" {
		t.Fatalf("with the creation: ok=%v jobs %+v", ok, jobs)
	}
	// A meta written before CreateOp existed: the first operation is the
	// creation, as before.
	res.CreateOp = ""
	if jobs, ok := owedJobs(res, "rome"); !ok || !jobs[0].Create {
		t.Fatalf("old meta: ok=%v jobs %+v", ok, jobs)
	}
}
