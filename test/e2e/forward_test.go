package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/scope"
)

func TestLocalRequest(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "", map[string]any{"title": "hello"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSite) != "paris" {
		t.Fatalf("create: %d %s %q", r.status, r.header, r.body)
	}
	if got := c.sites["paris"].app.items(t, "posts"); len(got) != 1 || got[0]["title"] != "hello" {
		t.Fatalf("paris holds %v", got)
	}
	if got := c.sites["berlin"].app.items(t, "posts"); len(got) != 0 {
		t.Fatalf("berlin holds %v", got)
	}
	r = c.do("paris", "GET", "/svc/posts/posts", "", nil)
	var list []map[string]any
	r.json(t, &list)
	if len(list) != 1 {
		t.Fatalf("list %v", list)
	}
}

func TestReplicationWithIDTranslation(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	// berlin's application already holds a post, so local ids differ.
	c.do("berlin", "POST", "/svc/posts/posts", "{posts: berlin}", map[string]any{"title": "older"})

	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "replicated"})
	gid := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated || !catalog.ValidID(gid) {
		t.Fatalf("create: %d %v %s", r.status, r.header, r.body)
	}
	if sites := r.header.Get(forward.HeaderSites); sites != "berlin=201, paris=201" {
		t.Fatalf("X-Cheops-Sites = %q", sites)
	}
	var created map[string]any
	r.json(t, &created)
	if created["id"] != gid {
		t.Fatalf("body id %v, want the global id %s", created["id"], gid)
	}
	paris, berlin := c.sites["paris"].app.items(t, "posts"), c.sites["berlin"].app.items(t, "posts")
	if len(paris) != 1 || len(berlin) != 2 || berlin[1]["title"] != "replicated" {
		t.Fatalf("paris %v, berlin %v", paris, berlin)
	}
	if len(c.sites["rome"].app.items(t, "posts")) != 0 {
		t.Fatal("rome's application got the post")
	}

	// Read by global id on both replicas: each translates to its local id.
	for _, s := range []string{"paris", "berlin"} {
		testkit.Eventually(t, 10*time.Second, s+" reads by global id", func() error {
			r := c.do(s, "GET", "/svc/posts/posts/"+gid, "", nil)
			var got map[string]any
			if r.status != http.StatusOK {
				return fmt.Errorf("%d %s", r.status, r.body)
			}
			r.json(t, &got)
			if got["title"] != "replicated" || got["id"] != gid {
				return fmt.Errorf("read %v", got)
			}
			return nil
		})
	}
	// rome is outside the scope: it knows nothing of the resource...
	if r := c.do("rome", "GET", "/v1/resources/"+gid, "", nil); r.status != http.StatusNotFound {
		t.Fatalf("rome's catalog answers %d %s", r.status, r.body)
	}
	// ...but a scoped request through rome reaches a replica.
	r = c.do("rome", "GET", "/svc/posts/posts/"+gid, "{posts: berlin}", nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "replicated") {
		t.Fatalf("scoped read through rome: %d %s", r.status, r.body)
	}

	// Update by global id from berlin reaches both replicas.
	r = c.do("berlin", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "updated"})
	if r.status != http.StatusOK || r.header.Get(forward.HeaderSites) != "berlin=200, paris=200" {
		t.Fatalf("update: %d %v %s", r.status, r.header, r.body)
	}
	if p := c.sites["paris"].app.items(t, "posts"); p[0]["title"] != "updated" {
		t.Fatalf("paris after update: %v", p)
	}
	if b := c.sites["berlin"].app.items(t, "posts"); b[1]["title"] != "updated" || b[0]["title"] != "older" {
		t.Fatalf("berlin after update: %v", b)
	}
	// Delete by global id removes both replicas and nothing else.
	r = c.do("paris", "DELETE", "/svc/posts/posts/"+gid, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if p, b := c.sites["paris"].app.items(t, "posts"), c.sites["berlin"].app.items(t, "posts"); len(p) != 0 || len(b) != 1 {
		t.Fatalf("after delete: paris %v, berlin %v", p, b)
	}
	var res catalog.Resource
	c.do("paris", "GET", "/v1/resources/"+gid, "", nil).json(t, &res)
	if len(res.Operations) != 3 || res.PerSite["berlin"].Status != catalog.StatusDeleted {
		t.Fatalf("catalog after delete: %+v", res)
	}
}

func TestSharingBetweenServices(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	sc := "{posts: paris, comments: berlin}"
	r := c.do("paris", "POST", "/svc/comments/comments", sc, map[string]any{"text": "nice"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSite) != "berlin" {
		t.Fatalf("comment: %d %v %s", r.status, r.header, r.body)
	}
	r = c.do("paris", "POST", "/svc/posts/posts", sc, map[string]any{"title": "t"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSite) != "paris" {
		t.Fatalf("post: %d %v", r.status, r.header)
	}
	if len(c.sites["berlin"].app.items(t, "comments")) != 1 || len(c.sites["paris"].app.items(t, "comments")) != 0 {
		t.Fatal("the comment is not where its scope put it")
	}
	// The same through the URL form for clients that take a base URL.
	r = c.do("paris", "GET", "/scope/"+url.PathEscape(sc)+"/svc/comments/comments", "", nil)
	if r.status != http.StatusOK || r.header.Get(forward.HeaderSite) != "berlin" || !strings.Contains(string(r.body), "nice") {
		t.Fatalf("scoped URL: %d %v %s", r.status, r.header, r.body)
	}
}

func TestChoiceFallbackAndAround(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	// '|' picks the nearest: the local site, at RTT 0.
	if r := c.do("berlin", "GET", "/svc/posts/posts", "{posts: paris | berlin}", nil); r.header.Get(forward.HeaderSite) != "berlin" {
		t.Fatalf("choice answered by %q", r.header.Get(forward.HeaderSite))
	}
	// around(paris, 1s) from berlin: paris itself is nearest to paris.
	if r := c.do("berlin", "GET", "/svc/posts/posts", "{posts: around(paris, 1s)}", nil); r.header.Get(forward.HeaderSite) != "paris" {
		t.Fatalf("around answered by %q", r.header.Get(forward.HeaderSite))
	}
	c.stop("rome")
	c.waitState(scope.Down, []string{"paris", "berlin"}, []string{"rome"})
	r := c.do("paris", "GET", "/svc/posts/posts", "{posts: rome ; berlin}", nil)
	if r.status != http.StatusOK || r.header.Get(forward.HeaderSite) != "berlin" {
		t.Fatalf("fallback: %d answered by %q", r.status, r.header.Get(forward.HeaderSite))
	}
	// A replicated create with rome down succeeds and records it pending.
	r = c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & rome}", map[string]any{"title": "while rome is away"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSites) != "paris=201, rome=pending" {
		t.Fatalf("create with rome down: %d %v %s", r.status, r.header, r.body)
	}
	var res catalog.Resource
	c.do("paris", "GET", "/v1/resources/"+r.header.Get(forward.HeaderResource), "", nil).json(t, &res)
	if v := res.PerSite["rome"]; v.Status != catalog.StatusPending || len(v.Pending) != 1 {
		t.Fatalf("rome in the catalog: %+v", v)
	}
	// Nothing reachable: 503 with the reasons.
	r = c.do("paris", "GET", "/svc/posts/posts", "{posts: rome}", nil)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "rome") {
		t.Fatalf("unreachable: %d %s", r.status, r.body)
	}
}

func TestCrossRead(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "both"})
	gid := r.header.Get(forward.HeaderResource)
	c.do("berlin", "POST", "/svc/posts/posts", "{posts: berlin}", map[string]any{"title": "berlin only"})
	r = c.do("paris", "GET", "/svc/posts/posts", "{posts: paris & berlin}", nil)
	var items []map[string]any
	r.json(t, &items)
	if r.status != http.StatusOK || len(items) != 3 {
		t.Fatalf("cross read: %d %s", r.status, r.body)
	}
	bySite := map[string]int{}
	globals := 0
	for _, it := range items {
		bySite[it["_site"].(string)]++
		if it["id"] == gid {
			globals++
		}
	}
	if bySite["paris"] != 1 || bySite["berlin"] != 2 || globals != 2 {
		t.Fatalf("items %v", items)
	}
}

func TestBadInput(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	deep := strings.Repeat("(", 70) + "paris" + strings.Repeat(")", 70)
	huge := "{posts: " + strings.Repeat("paris & ", 9000) + "paris}"
	for _, tc := range []struct {
		name, method, path, scope string
		body                      any
		status                    int
		code, message             string
	}{
		{"malformed scope", "GET", "/svc/posts/posts", "{posts: &berlin}", nil, 400, "bad_scope", "column 9"},
		{"unclosed scope", "GET", "/svc/posts/posts", "{posts: paris", nil, 400, "bad_scope", "expected"},
		{"empty binding", "GET", "/svc/posts/posts", "{posts: }", nil, 400, "bad_scope", "site name"},
		{"duplicate service", "GET", "/svc/posts/posts", "{posts: paris, posts: berlin}", nil, 400, "bad_scope", "twice"},
		{"deep nesting", "GET", "/svc/posts/posts", deep, nil, 400, "bad_scope", "nested deeper"},
		{"huge scope", "GET", "/svc/posts/posts", huge, nil, 400, "bad_scope", "longer than"},
		{"invalid UTF-8 in the scope", "GET", "/svc/posts/posts?scope=%FF", "", nil, 400, "bad_scope", "UTF-8"},
		{"bad duration", "GET", "/svc/posts/posts", "{posts: around(paris, soon)}", nil, 400, "bad_scope", "duration"},
		{"unknown site", "GET", "/svc/posts/posts", "{posts: tokyo}", nil, 400, "unknown_site", "tokyo"},
		{"unknown site in around", "GET", "/svc/posts/posts", "{posts: around(tokyo, 5ms)}", nil, 400, "unknown_site", "tokyo"},
		{"unknown site in a create", "POST", "/svc/posts/posts", "{posts: paris & tokyo}", map[string]any{"title": "x"}, 400, "unknown_site", "tokyo"},
		{"unknown service", "GET", "/svc/videos/videos", "", nil, 404, "unknown_service", "videos"},
		{"no service", "GET", "/svc/", "", nil, 404, "unknown_service", "unknown service"},
		{"unknown endpoint", "GET", "/v2/everything", "", nil, 404, "not_found", "no such endpoint"},
		{"unknown resource", "GET", "/v1/resources/01ARZ3NDEKTSV4RRFFQ69G5FAV", "", nil, 404, "not_found", "no resource"},
		{"malformed resource id", "GET", "/v1/resources/..%2F..%2Fetc", "", nil, 404, "not_found", ""},
		{"oversized body", "POST", "/svc/posts/posts", "", []byte(strings.Repeat("x", 70<<10)), 413, "too_large", "limit"},
		{"oversized replicated body", "POST", "/svc/posts/posts", "{posts: paris & berlin}", []byte(strings.Repeat("x", 70<<10)), 413, "too_large", "limit"},
		{"bad scope in the URL", "GET", "/scope/%7Bposts%3A/svc/posts/posts", "", nil, 400, "bad_scope", "column"},
		{"attach without a site", "POST", "/v1/resources/01ARZ3NDEKTSV4RRFFQ69G5FAV/attach", "", []byte(`{`), 400, "bad_input", "site"},
	} {
		r := c.do("paris", tc.method, tc.path, tc.scope, tc.body)
		if r.status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.body, tc.status)
			continue
		}
		if tc.code == "" {
			continue
		}
		var e map[string]string
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Errorf("%s: not a JSON error: %s", tc.name, r.body)
			continue
		}
		if e["code"] != tc.code || !strings.Contains(e["error"], tc.message) {
			t.Errorf("%s: %d %v", tc.name, r.status, e)
		}
	}
	// A body that is not JSON goes to the application, which refuses it;
	// nothing is recorded.
	if r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", []byte("{not json")); r.status < 400 {
		t.Errorf("bad JSON body: %d %s", r.status, r.body)
	}
	if n := len(c.sites["paris"].app.items(t, "posts")); n != 0 {
		t.Fatalf("bad requests created %d posts at paris", n)
	}
	if n := len(c.sites["berlin"].app.items(t, "posts")); n != 0 {
		t.Fatalf("bad requests created %d posts at berlin", n)
	}
	if r := c.do("paris", "GET", "/v1/resources", "", nil); strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("bad requests left catalog entries: %s", r.body)
	}
}
