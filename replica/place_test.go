package replica

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"

	"cheops/catalog"
)

// attachJob is the creating operation of a copy sent by an attach.
func attachJob(opID string) Job {
	c := catalog.Operation{ID: opID, Resource: gid, Origin: "paris", At: catalog.Timestamp{Wall: 10}, Method: http.MethodPost, Path: "/posts", Body: []byte(`{"t":"v1"}`)}
	return Job{Op: c, Service: "posts", Create: true, Collection: "/posts"}
}

// counter is a clock that only moves forward, like a site's HLC.
type counter struct {
	mu  sync.Mutex
	now int64
}

func (c *counter) stamp() catalog.Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now++
	return catalog.Timestamp{Wall: 1000 + c.now}
}

// Any number of concurrent attaches (different operations) leave one
// copy: the first makes it, the others adopt it, and their stamps are
// distinct and increasing in the order they ran.
func TestConcurrentAttachesMakeOneCopy(t *testing.T) {
	for _, n := range []int{2, 5, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			app := newMemApp()
			x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
			clock := &counter{}
			locals := make([]string, n)
			stamps := make([]catalog.Timestamp, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, at := x.Attach(context.Background(), attachJob(fmt.Sprintf("attach%02d", i)), catalog.Timestamp{}, "", clock.stamp)
					if !r.OK() {
						t.Errorf("attach %d: %+v", i, r)
					}
					locals[i], stamps[i] = r.LocalID, at
				}()
			}
			wg.Wait()
			if len(app.items) != 1 || app.calls != 1 {
				t.Fatalf("%d attaches: %d items, %d calls to the application", n, len(app.items), app.calls)
			}
			seen := map[catalog.Timestamp]bool{}
			for i := range n {
				if locals[i] != "1" || stamps[i].IsZero() || seen[stamps[i]] {
					t.Fatalf("attach %d: local %q, stamp %v (stamps %v)", i, locals[i], stamps[i], stamps)
				}
				seen[stamps[i]] = true
			}
		})
	}
}

// A copy made before the last detach is not adopted: that detach left it
// (without deleting it), and the attach makes a new one. A copy made after
// it is (a concurrent attach).
func TestAttachAdoptsOnlyACopyNewerThanTheLastDetach(t *testing.T) {
	app := newMemApp()
	x := newExecutor(t, app, dssync.MutexWrap(ds.NewMapDatastore()))
	clock := &counter{}
	ctx := context.Background()
	r, first := x.Attach(ctx, attachJob("attach1"), catalog.Timestamp{}, "", clock.stamp)
	if !r.OK() || r.LocalID != "1" {
		t.Fatalf("first attach: %+v", r)
	}
	// Adopted: the attach was decided before any detach.
	if r, _ := x.Attach(ctx, attachJob("attach2"), catalog.Timestamp{}, "", clock.stamp); r.LocalID != "1" || len(app.items) != 1 {
		t.Fatalf("concurrent attach: %+v, %d items", r, len(app.items))
	}
	// A detach without delete at a version after the copy: not adopted.
	// (The site's clock is past the detach: it observed the attach
	// operation's timestamp, taken after the detach was seen.)
	detached := catalog.Timestamp{Wall: first.Wall + 100}
	clock.now = detached.Wall
	r, at := x.Attach(ctx, attachJob("attach3"), detached, "", clock.stamp)
	if !r.OK() || r.LocalID != "2" || len(app.items) != 2 || at.Compare(detached) <= 0 {
		t.Fatalf("attach after a detach: %+v at %v, %d items", r, at, len(app.items))
	}
	// An attach decided on the same placement adopts the new copy.
	if r, _ = x.Attach(ctx, attachJob("attach4"), detached, "", clock.stamp); r.LocalID != "2" || len(app.items) != 2 {
		t.Fatalf("concurrent attach after the detach: %+v, %d items", r, len(app.items))
	}
	// The same operation delivered twice runs once.
	if r, _ = x.Attach(ctx, attachJob("attach4"), detached, "", clock.stamp); !r.Duplicate || r.LocalID != "2" || len(app.items) != 2 {
		t.Fatalf("attach delivered twice: %+v, %d items", r, len(app.items))
	}
}

// A detach that deletes the copy deletes it and forgets it: an attach that
// runs later makes a new copy; its stamp follows the attach's.
func TestDetachDeletesAndForgets(t *testing.T) {
	app := newMemApp()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	x := newExecutor(t, app, store)
	clock := &counter{}
	ctx := context.Background()
	r, attached := x.Attach(ctx, attachJob("attach1"), catalog.Timestamp{}, "", clock.stamp)
	if !r.OK() {
		t.Fatal(r)
	}
	if r := x.Apply(ctx, Job{Op: op("put1", 20, "berlin", http.MethodPut, `{"t":"v2"}`), Service: "posts"}); !r.OK() {
		t.Fatalf("a write to the attached copy: %+v", r)
	}
	d := Detachment{Resource: gid, Service: "posts", Purge: true, Path: "/posts/" + gid}
	detached, err := x.Detach(ctx, d, clock.stamp)
	if err != nil || detached.Compare(attached) <= 0 {
		t.Fatalf("detach: %v, stamp %v after attach %v", err, detached, attached)
	}
	if app.state() != "" {
		t.Fatalf("the copy is still there: %s", app.state())
	}
	// Forgotten, also by a new executor over the same journal (a restart).
	x2 := newExecutor(t, app, store)
	r, again := x2.Attach(ctx, attachJob("attach2"), catalog.Timestamp{}, "", clock.stamp)
	if !r.OK() || r.LocalID != "2" || again.Compare(detached) <= 0 {
		t.Fatalf("attach after detach: %+v at %v", r, again)
	}
	if got := app.state(); got != `{"id":"2","t":"v1"}` {
		t.Fatalf("the new copy: %s", got)
	}
	// A detach of a copy already gone (404) forgets it all the same.
	delete(app.items, "2")
	if _, err := x2.Detach(ctx, d, clock.stamp); err != nil {
		t.Fatalf("detach of a deleted copy: %v", err)
	}
}

// A client-named copy whose name the application holds already (409) is
// adopted.
func TestAttachAdoptsANamedItemThatExists(t *testing.T) {
	conflict := appFunc(func(method, path string) Answer {
		return Answer{Status: http.StatusConflict, Body: []byte(`{"reason":"AlreadyExists"}`)}
	})
	x := newExecutor(t, conflict, dssync.MutexWrap(ds.NewMapDatastore()))
	r, at := x.Attach(context.Background(), attachJob("attach1"), catalog.Timestamp{}, "/namespaces/n1", (&counter{}).stamp)
	if !r.OK() || r.LocalID != "/namespaces/n1" || at.IsZero() {
		t.Fatalf("%+v at %v", r, at)
	}
	// Without a name a 409 is a refusal, as for any create.
	r, at = x.Attach(context.Background(), attachJob("attach2"), catalog.Timestamp{Wall: 1 << 50}, "", (&counter{}).stamp)
	if r.Failed == "" || !at.IsZero() {
		t.Fatalf("%+v at %v", r, at)
	}
}

type appFunc func(method, path string) Answer

func (f appFunc) Call(_ context.Context, _, method, path string, _ http.Header, _ []byte) (Answer, error) {
	return f(method, path), nil
}

func (f appFunc) LocalID(_, _ string, _ []byte) (string, bool) { return "", false }
