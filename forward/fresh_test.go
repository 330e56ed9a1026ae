package forward

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"

	"cheops/catalog"
	"cheops/replica"
	"cheops/scope"
)

// memCatalogStore is a catalog.Store of one site, in memory: every
// group's keys in one map.
type memCatalogStore struct {
	mu       sync.Mutex
	keys     map[string][]byte
	sites    map[string][]string
	watchers []func(sites []string, key string, value []byte, deleted bool)
}

func newMemCatalogStore() *memCatalogStore {
	return &memCatalogStore{keys: map[string][]byte{}, sites: map[string][]string{}}
}

func (s *memCatalogStore) Put(ctx context.Context, sites []string, key string, value []byte) error {
	return s.PutBatch(ctx, sites, []string{key}, [][]byte{value})
}

func (s *memCatalogStore) PutBatch(_ context.Context, sites []string, keys []string, values [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, k := range keys {
		s.keys[k], s.sites[k] = values[i], sites
		for _, w := range s.watchers {
			w(sites, k, values[i], false)
		}
	}
	return nil
}

func (s *memCatalogStore) Get(_ context.Context, _ []string, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.keys[key]
	return v, ok, nil
}

func (s *memCatalogStore) Delete(_ context.Context, _ []string, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, key)
	return nil
}

func (s *memCatalogStore) Scan(_ context.Context, prefix string, fn func(sites []string, key string, value []byte) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.keys {
		if strings.HasPrefix(k, prefix) {
			if err := fn(s.sites[k], k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *memCatalogStore) Watch(fn func(sites []string, key string, value []byte, deleted bool)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = append(s.watchers, fn)
	return func() {}
}

// countingApp is an application that counts the items it creates.
type countingApp struct {
	mu      sync.Mutex
	created int
}

func (a *countingApp) Call(_ context.Context, _, method, _ string, _ http.Header, _ []byte) (replica.Answer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if method != http.MethodPost {
		return replica.Answer{Status: http.StatusOK, Body: []byte(`[]`)}, nil
	}
	a.created++
	return replica.Answer{Status: http.StatusCreated, Body: []byte(`{"id":"` + strconv.Itoa(a.created) + `"}`)}, nil
}

func (a *countingApp) LocalID(_, _ string, body []byte) (string, bool) {
	var v struct{ ID string }
	return v.ID, json.Unmarshal(body, &v) == nil && v.ID != ""
}

func (a *countingApp) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.created
}

// TestFreshCreateAtAReplica: a replica runs a create its origin sent as
// fresh without reading its journal, unless its catalog holds the
// resource: then an earlier run of the replica may have executed it from
// the catalog (its runner), and the journal says so. A create executed
// by the runner before a restart and delivered fresh after it (a kept
// stream closed unread, sent again) is a duplicate, not a second item.
func TestFreshCreateAtAReplica(t *testing.T) {
	ctx := context.Background()
	cat, err := catalog.New(ctx, catalog.Config{Store: newMemCatalogStore(), Self: "berlin"})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	journal := dssync.MutexWrap(ds.NewMapDatastore())
	app := &countingApp{}
	newCreate := func() (catalog.Meta, catalog.Operation) {
		id := catalog.NewID(time.Now())
		op := catalog.Operation{ID: catalog.NewID(time.Now()), Resource: id, Origin: "paris", At: cat.Clock().Now(), Method: http.MethodPost,
			Path: "/posts", Targets: []string{"paris", "berlin"}, Outcomes: map[string]string{"paris": "201", "berlin": catalog.OutcomePending}}
		return catalog.Meta{ID: id, Service: "posts", Sites: op.Targets, Collection: "/posts"}, op
	}
	// An earlier run of berlin: the runner executed a create it found in
	// the catalog.
	meta, op := newCreate()
	if err := cat.Create(ctx, meta, op); err != nil {
		t.Fatal(err)
	}
	earlier, err := replica.NewExecutor(replica.Config{App: app, Journal: journal})
	if err != nil {
		t.Fatal(err)
	}
	if r := earlier.Apply(ctx, replica.Job{Op: op, Service: "posts", Create: true, Collection: "/posts", Owed: true}); !r.OK() {
		t.Fatalf("the runner's create: %+v", r)
	}
	// This run: the same create arrives fresh.
	x, err := replica.NewExecutor(replica.Config{App: app, Journal: journal})
	if err != nil {
		t.Fatal(err)
	}
	view := scope.View{Local: "berlin", Sites: map[string]scope.SiteInfo{"berlin": {State: scope.Up}, "paris": {State: scope.Up}}}
	f := &Forwarder{cfg: Config{Membership: fakeMembership{view}, Catalog: cat, SiteTimeout: 5 * time.Second}, exec: x, stopCtx: ctx}
	send := func(op catalog.Operation) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/svc/posts/posts", nil)
		w := httptest.NewRecorder()
		f.serveOp(w, &request{r: r, svc: Service{Name: "posts"}, body: []byte(`{"t":1}`)},
			encodeOp(wireOp{Op: op, Create: true, Collection: "/posts", Fresh: true}))
		return w
	}
	w := send(op)
	if w.Code != http.StatusCreated || w.Header().Get(HeaderLocalID) != "1" {
		t.Fatalf("the create sent again: %d %q %s", w.Code, w.Header().Get(HeaderLocalID), w.Body)
	}
	if n := app.count(); n != 1 {
		t.Fatalf("the application holds %d items, want 1: a create the catalog holds ran again", n)
	}
	// A resource the catalog does not hold: run, once.
	_, op2 := newCreate()
	if w := send(op2); w.Code != http.StatusCreated || w.Header().Get(HeaderLocalID) != "2" {
		t.Fatalf("a fresh create: %d %q %s", w.Code, w.Header().Get(HeaderLocalID), w.Body)
	}
	if w := send(op2); w.Code != http.StatusCreated || app.count() != 2 {
		t.Fatalf("a fresh create delivered twice: %d, %d items, want 2", w.Code, app.count())
	}
}
