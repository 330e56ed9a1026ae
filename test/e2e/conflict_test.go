package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/scope"
)

// partition cuts (or heals) every connection between two sites.
func (c *cluster) partition(a, b string, cut bool) {
	pa, _ := c.sites[a].agent.Node().PeerOf(b)
	pb, _ := c.sites[b].agent.Node().PeerOf(a)
	if cut {
		c.sites[a].agent.Node().Block(pa)
		c.sites[b].agent.Node().Block(pb)
		c.waitState(scope.Down, []string{a}, []string{b})
		c.waitState(scope.Down, []string{b}, []string{a})
		return
	}
	c.sites[a].agent.Node().Unblock(pa)
	c.sites[b].agent.Node().Unblock(pb)
}

func (c *cluster) settled(t *testing.T, gid string, sites ...string) catalog.Resource {
	t.Helper()
	var res catalog.Resource
	testkit.Eventually(t, 30*time.Second, "nothing pending for "+gid, func() error {
		var first []string
		for i, s := range sites {
			r := c.do(s, "GET", "/v1/resources/"+gid, "", nil)
			if r.status != http.StatusOK {
				return fmt.Errorf("%s: %d", s, r.status)
			}
			res = catalog.Resource{}
			r.json(t, &res)
			for site, v := range res.PerSite {
				if len(v.Pending) > 0 {
					return fmt.Errorf("%s sees %s owing %v", s, site, v.Pending)
				}
			}
			// A site that has not heard of an operation yet does not see
			// it owed: settled also means every site lists the same ones.
			ids := make([]string, len(res.Operations))
			for j, op := range res.Operations {
				ids[j] = op.ID
			}
			if i == 0 {
				first = ids
			} else if !slices.Equal(ids, first) {
				return fmt.Errorf("%s lists %d operations, %s %d", s, len(ids), sites[0], len(first))
			}
		}
		return nil
	})
	return res
}

func TestConflictingReplacesConvergeLastWriterWins(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "v0"})
	gid := r.header.Get(forward.HeaderResource)
	c.settled(t, gid, "paris", "berlin")

	c.partition("paris", "berlin", true)
	r = c.do("paris", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from paris"})
	if r.header.Get(forward.HeaderSites) != "berlin=pending, paris=200" {
		t.Fatalf("paris' update: %d %v", r.status, r.header)
	}
	time.Sleep(5 * time.Millisecond) // a later wall-clock millisecond for berlin's write
	r = c.do("berlin", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from berlin"})
	if r.header.Get(forward.HeaderSites) != "berlin=200, paris=pending" {
		t.Fatalf("berlin's update: %d %v", r.status, r.header)
	}
	c.partition("paris", "berlin", false)

	res := c.settled(t, gid, "paris", "berlin")
	for _, s := range []string{"paris", "berlin"} {
		posts := c.sites[s].app.items(t, "posts")
		if len(posts) != 1 || posts[0]["title"] != "from berlin" {
			t.Fatalf("%s holds %v, want the later write", s, posts)
		}
	}
	if sup := res.PerSite["berlin"].Superseded; len(sup) != 1 {
		t.Fatalf("berlin should show paris' older replace as superseded: %+v", res.PerSite["berlin"])
	}
	if len(res.Operations) != 3 {
		t.Fatalf("operation log: %+v", res.Operations)
	}
}

func TestDeleteOnOneSideUpdateOnTheOther(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "v0"})
	gid := r.header.Get(forward.HeaderResource)
	c.settled(t, gid, "paris", "berlin")

	c.partition("paris", "berlin", true)
	if r := c.do("paris", "DELETE", "/svc/posts/posts/"+gid, "", nil); r.status != http.StatusOK {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	time.Sleep(5 * time.Millisecond)
	if r := c.do("berlin", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "edited"}); r.status != http.StatusOK {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	c.partition("paris", "berlin", false)

	res := c.settled(t, gid, "paris", "berlin")
	for _, s := range []string{"paris", "berlin"} {
		if posts := c.sites[s].app.items(t, "posts"); len(posts) != 0 {
			t.Fatalf("%s still holds %v: the delete must win everywhere", s, posts)
		}
		if res.PerSite[s].Status != catalog.StatusDeleted {
			t.Fatalf("%s status %q", s, res.PerSite[s].Status)
		}
	}
	if sup := res.PerSite["paris"].Superseded; len(sup) != 1 {
		t.Fatalf("paris should show berlin's update as superseded by the delete: %+v", res.PerSite["paris"])
	}
}

// TestConcurrentPatchesEndInHLCOrder: PATCHes (ordered by default) of the
// same field on both sides end, on every replica, as if applied in HLC
// order; PATCHes of different fields both survive.
func TestConcurrentPatchesEndInHLCOrder(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "v0", "a": 0, "b": 0})
	gid := r.header.Get(forward.HeaderResource)
	c.settled(t, gid, "paris", "berlin")

	c.partition("paris", "berlin", true)
	c.do("paris", "PATCH", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from paris", "a": 1})
	time.Sleep(5 * time.Millisecond)
	c.do("berlin", "PATCH", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from berlin", "b": 2})
	c.partition("paris", "berlin", false)

	c.settled(t, gid, "paris", "berlin")
	for _, s := range []string{"paris", "berlin"} {
		p := c.sites[s].app.items(t, "posts")[0]
		if p["title"] != "from berlin" || p["a"] != float64(1) || p["b"] != float64(2) {
			t.Fatalf("%s holds %v, want title from berlin, a=1, b=2", s, p)
		}
	}
}
