package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"testing"

	"cheops/catalog"
	"cheops/forward"
)

// replay computes the state the catalog's operation order implies for a
// json-server item: PUT replaces, PATCH merges, DELETE removes; an
// operation refused everywhere has no effect.
func replay(t *testing.T, res catalog.Resource) map[string]any {
	t.Helper()
	var state map[string]any
	for i, op := range res.Operations {
		applied := false
		for _, o := range op.Outcomes {
			if catalog.Succeeded(o) || len(o) > len(catalog.SupersededPrefix) && o[:len(catalog.SupersededPrefix)] == catalog.SupersededPrefix {
				applied = true
			}
		}
		if !applied {
			continue
		}
		var body map[string]any
		if len(op.Body) > 0 {
			if err := json.Unmarshal(op.Body, &body); err != nil {
				t.Fatalf("operation %s body: %v", op.ID, err)
			}
		}
		switch {
		case i == 0:
			state = maps.Clone(body)
		case state == nil:
		case op.Method == http.MethodPut:
			state = maps.Clone(body)
		case op.Method == http.MethodPatch:
			maps.Copy(state, body)
		case op.Method == http.MethodDelete:
			state = nil
		}
	}
	if state != nil {
		delete(state, "id")
	}
	return state
}

// copyOf reads a site's copy of a resource straight from its json-server
// (nil when it has none), without its local id.
func (c *cluster) copyOf(t *testing.T, site string, res catalog.Resource) map[string]any {
	t.Helper()
	local := res.PerSite[site].LocalID
	for _, it := range c.sites[site].app.items(t, "posts") {
		if fmt.Sprint(it["id"]) == local {
			delete(it, "id")
			// json-server decodes numbers as float64, as replay does.
			return it
		}
	}
	return nil
}

// checkCopies compares the copies read straight from each site's
// json-server with each other, and with the state the catalog's order of
// operations implies (settled has checked that every site lists the same
// operations).
func (c *cluster) checkCopies(t *testing.T, rep int, res catalog.Resource, sites []string) {
	t.Helper()
	want := replay(t, res)
	for _, s := range sites {
		if got := c.copyOf(t, s, res); !reflect.DeepEqual(got, want) {
			t.Fatalf("rep %d (%d operations): %s holds %v, the catalog's order gives %v", rep, len(res.Operations), s, got, want)
		}
	}
}

// TestLiveRacesConverge sends PUTs, PATCHes and (in some repetitions) a
// DELETE to one resource replicated on three sites, from three clients at
// once, one through each agent, and checks after every repetition that
// the three json-server copies are equal and hold the state the catalog's
// operation order implies.
func TestLiveRacesConverge(t *testing.T) {
	sites := []string{"paris", "berlin", "rome"}
	c := newCluster(t, sites...)
	const reps, writes = 8, 15
	for rep := range reps {
		r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin & rome}", map[string]any{"title": "v0", "rep": rep})
		gid := r.header.Get(forward.HeaderResource)
		if r.status != http.StatusCreated || gid == "" {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		c.settled(t, gid, sites...)
		withDelete := rep%4 == 3
		var wg sync.WaitGroup
		for w, s := range sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(rep), uint64(w)))
				for i := range writes {
					var resp response
					switch {
					case withDelete && w == 1 && i == writes/2:
						resp = c.do(s, "DELETE", "/svc/posts/posts/"+gid, "", nil)
					case rng.IntN(2) == 0:
						resp = c.do(s, "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": fmt.Sprintf("%s-%d", s, i), "by": s, "n": i})
					default:
						resp = c.do(s, "PATCH", "/svc/posts/posts/"+gid, "", map[string]any{"f" + s: i, "title": fmt.Sprintf("patch %s-%d", s, i)})
					}
					if resp.status >= 500 {
						t.Errorf("%s write %d: %d %s", s, i, resp.status, resp.body)
					} else if resp.status >= 300 {
						t.Logf("%s write %d: %d %s (%s)", s, i, resp.status, resp.body, resp.header.Get(forward.HeaderSites))
					}
				}
			}()
		}
		wg.Wait()
		res := c.settled(t, gid, sites...)
		c.checkCopies(t, rep, res, sites)
		want := replay(t, res)
		if withDelete && want != nil {
			t.Fatalf("rep %d: a delete was acknowledged but the order implies %v", rep, want)
		}
	}
}

// TestRacesAcrossACutConverge: three clients write one resource through
// the three agents while rome is cut off from the others in the middle of
// the writes and then healed; once nothing is pending, the three copies
// hold the state of the catalog's order.
func TestRacesAcrossACutConverge(t *testing.T) {
	sites := []string{"paris", "berlin", "rome"}
	c := newCluster(t, sites...)
	for rep := range 2 {
		r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin & rome}", map[string]any{"title": "v0"})
		gid := r.header.Get(forward.HeaderResource)
		c.settled(t, gid, sites...)
		cut := make(chan struct{})
		var wg sync.WaitGroup
		for w, s := range sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(rep), uint64(w)))
				for i := range 30 {
					if i == 10 {
						<-cut
					}
					var resp response
					if rng.IntN(2) == 0 {
						resp = c.do(s, "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": fmt.Sprintf("%s-%d", s, i), "by": s})
					} else {
						resp = c.do(s, "PATCH", "/svc/posts/posts/"+gid, "", map[string]any{"f" + s: i})
					}
					if resp.status >= 300 {
						t.Errorf("%s write %d: %d %s", s, i, resp.status, resp.body)
					}
				}
			}()
		}
		// Cut while the writers are at it, let them write on both sides,
		// heal while they still write.
		c.partition("rome", "paris", true)
		c.partition("rome", "berlin", true)
		close(cut)
		c.partition("rome", "paris", false)
		c.partition("rome", "berlin", false)
		wg.Wait()
		res := c.settled(t, gid, sites...)
		c.checkCopies(t, rep, res, sites)
	}
}
