package replica

import (
	"context"
	"errors"
	"net/http"
	"testing"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"

	"cheops/catalog"
)

// cutApp is a memApp whose answers to the next cut POSTs are lost: the
// item is made and the caller gets an error, as when the site stops (or
// the connection breaks) after the application made the copy and before
// the executor journaled the outcome. listFails makes a GET of the
// collection answer 503.
type cutApp struct {
	*memApp
	cut       int
	listFails bool
}

func (a *cutApp) Call(ctx context.Context, svc, method, path string, h http.Header, body []byte) (Answer, error) {
	if method == http.MethodGet && path == "/posts" && a.listFails {
		return Answer{Status: http.StatusServiceUnavailable}, nil
	}
	ans, err := a.memApp.Call(ctx, svc, method, path, h, body)
	if method == http.MethodPost && a.cut > 0 {
		a.cut--
		return Answer{}, errors.New("connection reset by peer")
	}
	return ans, err
}

// An attach cut short after the application made its copy — its answer
// lost, or the site restarted before the outcome or the stamp was
// journaled — leaves one copy: the next attach (another operation, as a
// client's retry or a concurrent attach through another site is) finds
// and adopts it, and so does every attach after it.
func TestAttachCutShortAdoptsItsCopy(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		restart bool // a new executor over the same journal
		stamped bool // the outcome was journaled, the stamp was not
	}{
		{name: "answer lost"},
		{name: "restart before the outcome", restart: true},
		{name: "restart before the stamp", restart: true, stamped: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := dssync.MutexWrap(ds.NewMapDatastore())
			app := &cutApp{memApp: newMemApp()}
			x := newExecutor(t, app, store)
			clock := &counter{}
			if tc.stamped {
				if r, _ := x.Attach(ctx, attachJob("attach1"), catalog.Timestamp{}, "", clock.stamp); !r.OK() {
					t.Fatalf("first attach: %+v", r)
				}
				// What a stop before the stamp leaves: the copy and its
				// outcome, no stamp.
				if err := store.Delete(ctx, attachedKey(gid)); err != nil {
					t.Fatal(err)
				}
			} else {
				app.cut = 1
				if r, at := x.Attach(ctx, attachJob("attach1"), catalog.Timestamp{}, "", clock.stamp); r.Err == nil || !at.IsZero() {
					t.Fatalf("cut attach: %+v at %v, want a transient failure", r, at)
				}
			}
			if len(app.items) != 1 {
				t.Fatalf("after the cut attach the application holds %d items, want the 1 made", len(app.items))
			}
			if tc.restart {
				x = newExecutor(t, app, store)
			}
			for _, id := range []string{"attach2", "attach3"} {
				r, at := x.Attach(ctx, attachJob(id), catalog.Timestamp{}, "", clock.stamp)
				if !r.OK() || r.LocalID != "1" || at.IsZero() {
					t.Fatalf("%s: %+v at %v, want the copy 1 adopted", id, r, at)
				}
				if len(app.items) != 1 {
					t.Fatalf("%s: the application holds %d items, want 1", id, len(app.items))
				}
			}
			// A restart after the adoption keeps it.
			if r, _ := newExecutor(t, app, store).Attach(ctx, attachJob("attach4"), catalog.Timestamp{}, "", clock.stamp); r.LocalID != "1" || len(app.items) != 1 {
				t.Fatalf("after a restart: %+v, %d items", r, len(app.items))
			}
		})
	}
}

// A copy an attach cut short may have made is looked for only by attaches
// decided on the same placement: one sent after a later detach (a larger
// base) makes a new copy, as for a copy left by a detach without delete.
// And when the application cannot be asked, the attach fails (transient)
// rather than make a copy blind.
func TestAttachCutShortLooksOnlyWhenItCan(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	app := &cutApp{memApp: newMemApp(), cut: 1}
	clock := &counter{}
	if r, _ := newExecutor(t, app, store).Attach(ctx, attachJob("attach1"), catalog.Timestamp{}, "", clock.stamp); r.Err == nil {
		t.Fatalf("cut attach: %+v", r)
	}
	x := newExecutor(t, app, store)
	app.listFails = true
	if r, at := x.Attach(ctx, attachJob("attach2"), catalog.Timestamp{}, "", clock.stamp); r.Err == nil || !at.IsZero() || len(app.items) != 1 {
		t.Fatalf("attach while the application cannot list: %+v at %v, %d items", r, at, len(app.items))
	}
	app.listFails = false
	detached := catalog.Timestamp{Wall: 1 << 40}
	r, at := x.Attach(ctx, attachJob("attach3"), detached, "", clock.stamp)
	if !r.OK() || r.LocalID != "2" || at.IsZero() || len(app.items) != 2 {
		t.Fatalf("attach after a later detach: %+v at %v, %d items", r, at, len(app.items))
	}
}

// A create that may have run (its entry begun) is not run again while the
// application cannot be asked whether it holds the item.
func TestMaybeExecutedCreateWaitsForTheApplication(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(ds.NewMapDatastore())
	app := &cutApp{memApp: newMemApp(), cut: 1}
	j := createJob()
	if r := newExecutor(t, app, store).Apply(ctx, j); r.Err == nil {
		t.Fatalf("cut create: %+v", r)
	}
	x := newExecutor(t, app, store)
	app.listFails = true
	if r := x.Apply(ctx, j); r.Err == nil || len(app.items) != 1 {
		t.Fatalf("create while the application cannot list: %+v, %d items", r, len(app.items))
	}
	app.listFails = false
	if r := x.Apply(ctx, j); !r.OK() || r.LocalID != "1" || len(app.items) != 1 {
		t.Fatalf("create once the application answers: %+v, %d items", r, len(app.items))
	}
}
