package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/forward"
	"cheops/internal/testkit"
)

func TestAttachThenDetach(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "v1"})
	gid := r.header.Get(forward.HeaderResource)
	other := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "never attached"}).header.Get(forward.HeaderResource)
	c.settled(t, gid, "paris", "berlin")

	// Attach rome: it gets the current state and joins the replica set.
	r = c.do("paris", "POST", "/v1/resources/"+gid+"/attach", "", map[string]any{"site": "rome"})
	if r.status != http.StatusOK {
		t.Fatalf("attach: %d %s", r.status, r.body)
	}
	if posts := c.sites["rome"].app.items(t, "posts"); len(posts) != 1 || posts[0]["title"] != "v1" {
		t.Fatalf("rome's application after attach: %v", posts)
	}
	testkit.Eventually(t, 10*time.Second, "rome's catalog holds the resource", func() error {
		res, err := c.sites["rome"].agent.Catalog().Get(t.Context(), gid)
		if err != nil {
			return err
		}
		if !slices.Equal(res.Sites, []string{"paris", "berlin", "rome"}) || len(res.Operations) != 1 {
			return fmt.Errorf("rome sees %+v", res)
		}
		return nil
	})
	// The scope shown is the placement; the scope it was created with is
	// beside it.
	// berlin learns of the attach through replication, like rome: wait
	// for it as well.
	testkit.Eventually(t, 10*time.Second, "berlin shows the placement", func() error {
		var shown catalog.Resource
		c.do("berlin", "GET", "/v1/resources/"+gid, "", nil).json(t, &shown)
		if shown.Scope != "{posts: paris & berlin & rome}" || shown.CreatedScope != "{posts: paris & berlin}" {
			return fmt.Errorf("after attach berlin shows scope %q, created with %q", shown.Scope, shown.CreatedScope)
		}
		return nil
	})
	if _, err := c.sites["rome"].agent.Catalog().Get(t.Context(), other); err == nil {
		t.Fatal("rome holds a resource that was never attached to it")
	}
	// An update now reaches all three.
	r = c.do("berlin", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "v2"})
	if r.status != http.StatusOK || r.header.Get(forward.HeaderSites) != "berlin=200, paris=200, rome=200" {
		t.Fatalf("update after attach: %d %v %s", r.status, r.header, r.body)
	}
	if posts := c.sites["rome"].app.items(t, "posts"); posts[0]["title"] != "v2" {
		t.Fatalf("rome after the update: %v", posts)
	}

	// Detach rome (keeping its copy): it stops receiving updates and its
	// catalog forgets the resource.
	r = c.do("paris", "POST", "/v1/resources/"+gid+"/detach", "", map[string]any{"site": "rome"})
	if r.status != http.StatusOK {
		t.Fatalf("detach: %d %s", r.status, r.body)
	}
	testkit.Eventually(t, 10*time.Second, "rome forgot the resource", func() error {
		if _, err := c.sites["rome"].agent.Catalog().Get(t.Context(), gid); err == nil {
			return fmt.Errorf("rome still holds %s", gid)
		}
		return nil
	})
	testkit.Eventually(t, 10*time.Second, "berlin sees the new replica set", func() error {
		res, err := c.sites["berlin"].agent.Catalog().Get(t.Context(), gid)
		if err != nil || !slices.Equal(res.Sites, []string{"paris", "berlin"}) {
			return fmt.Errorf("berlin sees %+v, %v", res.Sites, err)
		}
		return nil
	})
	r = c.do("berlin", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "v3"})
	if r.header.Get(forward.HeaderSites) != "berlin=200, paris=200" {
		t.Fatalf("update after detach: %v", r.header)
	}
	if posts := c.sites["rome"].app.items(t, "posts"); posts[0]["title"] != "v2" {
		t.Fatalf("rome's copy changed after detach: %v", posts)
	}
	var res catalog.Resource
	c.do("paris", "GET", "/v1/resources/"+gid, "", nil).json(t, &res)
	if _, ok := res.PerSite["rome"]; ok {
		t.Fatalf("paris still lists rome: %+v", res.PerSite)
	}
	if res.Scope != "{posts: paris & berlin}" {
		t.Fatalf("after detach paris shows scope %q", res.Scope)
	}
	// Bad input.
	for _, tc := range []struct {
		path   string
		body   any
		status int
		code   string
	}{
		{"/v1/resources/" + gid + "/attach", map[string]any{"site": "paris"}, 400, "bad_input"},
		{"/v1/resources/" + gid + "/attach", map[string]any{"site": "tokyo"}, 400, "unknown_site"},
		{"/v1/resources/" + gid + "/detach", map[string]any{"site": "tokyo"}, 400, "unknown_site"},
		{"/v1/resources/" + gid + "/attach", map[string]any{}, 400, "bad_input"},
		{"/v1/resources/" + gid + "/detach", map[string]any{"site": "rome"}, 400, "bad_input"},
		{"/v1/resources/" + gid + "/detach", map[string]any{"site": "paris"}, 400, "bad_input"},
		{"/v1/resources/01ARZ3NDEKTSV4RRFFQ69G5FAV/attach", map[string]any{"site": "rome"}, 404, "not_found"},
	} {
		r := c.do("paris", "POST", tc.path, "", tc.body)
		var e struct{ Code string }
		_ = json.Unmarshal(r.body, &e)
		if r.status != tc.status || e.Code != tc.code {
			t.Errorf("POST %s %v: %d %s, want %d %s", tc.path, tc.body, r.status, r.body, tc.status, tc.code)
		}
	}
}
