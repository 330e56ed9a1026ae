package catalog

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/crdt"
	"cheops/internal/testkit"
	"cheops/node"
	"cheops/scope"
)

// *crdt.Manager is the catalog's Store, without an adapter.
var _ Store = (*crdt.Manager)(nil)

// realSite is a site with a real libp2p node, pebble store, crdt manager
// and catalog.
type realSite struct {
	node *node.Node
	m    *crdt.Manager
	cat  *Catalog
}

func startReal(t testing.TB, names ...string) map[string]*realSite {
	t.Helper()
	dirs, ids := map[string]string{}, []peer.ID{}
	for _, n := range names {
		dirs[n] = filepath.Join(t.TempDir(), n)
		_, id, err := node.LoadIdentity(dirs[n])
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	sites := map[string]*realSite{}
	var boot []string
	for _, n := range names {
		nc := node.DefaultConfig()
		nc.Site, nc.DataDir, nc.Trust, nc.Peers = n, dirs[n], ids, boot
		nc.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		nc.ProbeInterval, nc.AnnounceInterval = 100*time.Millisecond, 200*time.Millisecond
		nd, err := node.New(context.Background(), nc)
		if err != nil {
			t.Fatal(err)
		}
		if boot == nil {
			boot = nd.Addrs()[:1]
		}
		store, err := crdt.OpenStore(filepath.Join(dirs[n], "store"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := crdt.DefaultConfig()
		cfg.Host, cfg.Datastore, cfg.Self, cfg.Resolve = nd.Host(), store, n, nd.PeerOf
		m, err := crdt.NewManager(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		cat, err := New(context.Background(), Config{Store: m, Self: n})
		if err != nil {
			t.Fatal(err)
		}
		sites[n] = &realSite{node: nd, m: m, cat: cat}
		t.Cleanup(func() {
			cat.Close()
			m.Close()
			nd.Close()
			store.Close()
		})
	}
	testkit.Eventually(t, 20*time.Second, "all sites up", func() error {
		for _, a := range names {
			for _, b := range names {
				if a != b && sites[a].node.View().Sites[b].State != scope.Up {
					return fmt.Errorf("%s does not see %s up", a, b)
				}
			}
		}
		return nil
	})
	return sites
}

func TestResourceReplicatedOnlyInItsScope(t *testing.T) {
	s := startReal(t, "a", "b", "c")
	ctx := context.Background()
	id := create(t, s["a"].cat, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	other := create(t, s["a"].cat, "posts", []string{"a", "c"}, map[string]string{"a": "5", "c": "6"})
	testkit.Eventually(t, 10*time.Second, "b sees the resource", func() error {
		r, err := s["b"].cat.Get(ctx, id)
		if err != nil {
			return err
		}
		if r.PerSite["b"].LocalID != "2" || len(r.Operations) != 1 {
			return fmt.Errorf("b sees %+v", r)
		}
		return nil
	})
	testkit.Eventually(t, 10*time.Second, "c sees its own resource", func() error {
		_, err := s["c"].cat.Get(ctx, other)
		return err
	})
	if _, err := s["c"].cat.Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c: Get = %v, want ErrNotFound", err)
	}
	list, _ := s["c"].cat.List(ctx, Filter{})
	if len(list) != 1 || list[0].ID != other {
		t.Fatalf("c lists %+v", list)
	}
	if _, ok := s["c"].cat.LookupLocal("posts", "b", "2"); ok {
		t.Fatal("c can translate b's local id")
	}
	// b records its own state; a sees it.
	if err := s["b"].cat.SetSite(ctx, id, SiteRecord{LocalID: "2", Status: StatusOK}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "a sees b's record", func() error {
		if _, ok := s["a"].cat.Record(id, "b"); !ok {
			return fmt.Errorf("no record of b at a")
		}
		return nil
	})
}

// partition cuts (cut) or heals every connection between two real sites.
func partition(s map[string]*realSite, a, b string, cut bool) {
	pa, pb := s[a].node.Host().ID(), s[b].node.Host().ID()
	if cut {
		s[a].node.Block(pb)
		s[b].node.Block(pa)
		return
	}
	s[a].node.Unblock(pb)
	s[b].node.Unblock(pa)
}

// Over real groups: a and b, cut off from each other, write their own
// records and operations of one resource; after the heal they resolve the
// same view, and c, outside the scope, still holds nothing of it.
func TestPartitionedWritesResolveAlikeOverCRDT(t *testing.T) {
	s := startReal(t, "a", "b", "c")
	ctx := context.Background()
	id := create(t, s["a"].cat, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	testkit.Eventually(t, 10*time.Second, "b sees the resource", func() error {
		_, err := s["b"].cat.Get(ctx, id)
		return err
	})
	partition(s, "a", "b", true)
	testkit.Eventually(t, 20*time.Second, "a sees b down", func() error {
		if st := s["a"].node.View().Sites["b"].State; st == scope.Up {
			return fmt.Errorf("b is %v", st)
		}
		return nil
	})
	for i := range 20 {
		for _, site := range []string{"a", "b"} {
			cat := s[site].cat
			if err := cat.AppendOp(ctx, Operation{Resource: id, Method: "PATCH", Path: fmt.Sprintf("/posts/x?%d", i)}); err != nil {
				t.Fatal(err)
			}
			if err := cat.SetSite(ctx, id, SiteRecord{LocalID: map[string]string{"a": "1", "b": "2"}[site], Status: StatusOK,
				Applied: map[string]string{fmt.Sprint(i): "200"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	partition(s, "a", "b", false)
	testkit.Eventually(t, 30*time.Second, "a and b resolve the same view", func() error {
		av, err := view(s["a"].cat, id)
		if err != nil {
			return err
		}
		bv, err := view(s["b"].cat, id)
		if err != nil {
			return err
		}
		if av != bv {
			return fmt.Errorf("views differ")
		}
		if n := len(mustGet(t, s["a"].cat, id).Operations); n != 41 {
			return fmt.Errorf("%d operations", n)
		}
		return nil
	})
	for _, site := range []string{"a", "b"} {
		if rec, _ := s["a"].cat.Record(id, site); rec.Applied["19"] != "200" {
			t.Fatalf("%s's last record is not the one resolved: %+v", site, rec)
		}
	}
	if _, err := s["c"].cat.Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("c: %v", err)
	}
}

// Over real groups: attach c to a resource of {a, b}, then detach it. c
// receives the entry (joining a group it was never in) and then forgets it;
// b never loses it.
func TestRehomeOverCRDT(t *testing.T) {
	s := startReal(t, "a", "b", "c")
	ctx := context.Background()
	bWatch := s["b"].cat.Watch(t.Context())
	id := create(t, s["a"].cat, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	testkit.Eventually(t, 10*time.Second, "b sees the resource", func() error {
		_, err := s["b"].cat.Get(ctx, id)
		return err
	})
	if err := s["b"].cat.SetSite(ctx, id, SiteRecord{LocalID: "2", Status: StatusOK}); err != nil {
		t.Fatal(err)
	}
	if err := s["a"].cat.Rehome(ctx, id, []string{"a", "b", "c"}, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "c holds the resource and b's record", func() error {
		r, err := s["c"].cat.Get(ctx, id)
		if err != nil {
			return err
		}
		if len(r.Operations) != 1 || r.PerSite["c"].LocalID != "3" {
			return fmt.Errorf("c sees %+v", r)
		}
		if _, ok := s["c"].cat.Record(id, "b"); !ok {
			return fmt.Errorf("no record of b at c")
		}
		return nil
	})
	if err := s["c"].cat.AppendOp(ctx, Operation{Resource: id, Method: "PUT", Path: "/posts/3"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "a and b see c's operation", func() error {
		for _, site := range []string{"a", "b"} {
			if n := len(mustGet(t, s[site].cat, id).Operations); n != 2 {
				return fmt.Errorf("%s sees %d operations", site, n)
			}
		}
		return nil
	})
	if err := s["b"].cat.Rehome(ctx, id, []string{"a", "b"}, map[string]string{"a": "1", "b": "2"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "c forgot the resource, a sees {a, b}", func() error {
		if _, err := s["c"].cat.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("c: %v", err)
		}
		if r := mustGet(t, s["a"].cat, id); !slices.Equal(r.Sites, []string{"a", "b"}) {
			return fmt.Errorf("a sees %v", r.Sites)
		}
		return nil
	})
	if drainFor(bWatch, Change{ID: id, Kind: KindRemoved}) {
		t.Fatal("b was told it lost the resource")
	}
}

// BenchmarkCreateCRDT creates resources scoped to {a, b} on a, over real
// groups (each create is synced to disk before it returns), and reports
// how long the last one took to be visible on b after the loop.
func BenchmarkCreateCRDT(b *testing.B) {
	s := startReal(b, "a", "b", "c")
	ctx := context.Background()
	var last string
	b.ResetTimer()
	for b.Loop() {
		last = NewID(time.Now())
		if err := s["a"].cat.Create(ctx, Meta{ID: last, Service: "posts", Sites: []string{"a", "b"}, LocalIDs: map[string]string{"a": "1", "b": "2"}},
			Operation{Method: "POST", Path: "/posts"}); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	for {
		if _, err := s["b"].cat.Get(ctx, last); err == nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			b.Fatal("b never saw the last create")
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000, "ms-to-visible-at-b")
}
