package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/forward"
	"cheops/internal/testkit"
)

// TestReadRightAfterCreateNeverFallsThrough: a resource read by its
// global id through another member the moment its create is answered is
// served (the agent waits for the catalog entry), and a global id no
// catalog knows gets cheops' 404 — never the application's, asked for an
// id it does not know.
func TestReadRightAfterCreateNeverFallsThrough(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	for i := range 20 {
		r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "fresh", "i": i})
		gid := r.header.Get(forward.HeaderResource)
		if r.status != http.StatusCreated {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		got := c.do("berlin", "GET", "/svc/posts/posts/"+gid, "", nil)
		var item map[string]any
		if got.status != http.StatusOK || json.Unmarshal(got.body, &item) != nil || item["id"] != gid {
			t.Fatalf("read %d through berlin right after the create: %d %s", i, got.status, got.body)
		}
	}
	unknown := catalog.NewID(time.Now())
	for _, site := range []string{"paris", "berlin"} {
		for _, method := range []string{"GET", "PUT", "DELETE"} {
			r := c.do(site, method, "/svc/posts/posts/"+unknown, "", map[string]any{"title": "x"})
			var e struct{ Code string }
			if r.status != http.StatusNotFound || json.Unmarshal(r.body, &e) != nil || e.Code != "unknown_resource" {
				t.Fatalf("%s %s of an unknown global id at %s: %d %s", method, unknown, site, r.status, r.body)
			}
		}
	}
}

// TestCreateWithoutIDIsRecorded: an application that answers a create
// without an id field still gets the resource recorded (marked unmapped
// on that site), never acknowledged as a resource the catalog does not
// know.
func TestCreateWithoutIDIsRecorded(t *testing.T) {
	var mu sync.Mutex
	created := 0
	noID := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			mu.Lock()
			created++
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, `{"ok": true}`)
			return
		}
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, `[]`)
	}))
	t.Cleanup(noID.Close)
	c := newClusterWith(t, map[string]string{"notes": noID.URL}, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/notes/notes", "{notes: paris & berlin}", map[string]any{"text": "hi"})
	gid := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated || gid == "" {
		t.Fatalf("create: %d %v %s", r.status, r.header, r.body)
	}
	for _, s := range []string{"paris", "berlin"} {
		testkit.Eventually(t, 10*time.Second, "the resource in "+s+"'s catalog", func() error {
			var res catalog.Resource
			g := c.do(s, "GET", "/v1/resources/"+gid, "", nil)
			if g.status != http.StatusOK {
				return fmt.Errorf("%d %s", g.status, g.body)
			}
			g.json(t, &res)
			for _, site := range []string{"paris", "berlin"} {
				if v := res.PerSite[site]; v.Status != catalog.StatusUnmapped || len(v.Pending) != 0 {
					return fmt.Errorf("%s: %+v", site, v)
				}
			}
			return nil
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if created != 2 {
		t.Fatalf("the application saw %d creates, want 2 (one per site)", created)
	}
}
