package e2e

import (
	"net/http"
	"strings"
	"testing"

	"cheops/agent"
	"cheops/errcode"
	"cheops/forward"
)

// A scope named in an agent's configuration, or defined through its API,
// is carried in a path without percent signs: /s/{name}/svc/….
func TestNamedScopes(t *testing.T) {
	c := newClusterTuned(t, nil, func(cfg *agent.Config) {
		cfg.Scopes = map[string]string{"pb": "{posts: paris & berlin}"}
	}, "paris", "berlin", "rome")

	r := c.do("paris", "POST", "/s/pb/svc/posts/posts", "", map[string]any{"title": "named"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSites) != "berlin=201, paris=201" {
		t.Fatalf("create through /s/pb: %d %v %s", r.status, r.header, r.body)
	}
	if n := len(c.sites["rome"].app.items(t, "posts")); n != 0 {
		t.Fatalf("rome's application holds %d posts", n)
	}

	// A name defined at run time through rome's API: rome reads berlin's copy.
	var ns agent.NamedScope
	c.do("rome", "PUT", "/v1/scopes/b", "", []byte("{posts: berlin}")).json(t, &ns)
	if ns != (agent.NamedScope{Name: "b", Scope: "{posts: berlin}", Source: agent.ScopeFromAPI}) {
		t.Fatalf("define: %+v", ns)
	}
	r = c.do("rome", "GET", "/s/b/svc/posts/posts", "", nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"named"`) || r.header.Get(forward.HeaderSite) != "berlin" {
		t.Fatalf("read through /s/b at rome: %d %v %s", r.status, r.header, r.body)
	}
	var list []agent.NamedScope
	c.do("rome", "GET", "/v1/scopes", "", nil).json(t, &list)
	if len(list) != 2 || list[0].Name != "b" || list[1] != (agent.NamedScope{Name: "pb", Scope: "{posts: paris & berlin}", Source: agent.ScopeFromConfig}) {
		t.Fatalf("GET /v1/scopes: %+v", list)
	}

	// Names are each agent's own: paris never heard of b.
	for _, tc := range []struct {
		site, method, path string
		body               []byte
		status             int
		code               string
	}{
		{"paris", "GET", "/s/b/svc/posts/posts", nil, http.StatusNotFound, errcode.UnknownScope},
		{"rome", "PUT", "/v1/scopes/pb", []byte("{posts: rome}"), http.StatusBadRequest, errcode.BoundByConfig},
		{"rome", "PUT", "/v1/scopes/x", []byte("{posts: "), http.StatusBadRequest, errcode.BadScope},
		{"rome", "DELETE", "/v1/scopes/b", nil, http.StatusOK, ""},
		{"rome", "GET", "/s/b/svc/posts/posts", nil, http.StatusNotFound, errcode.UnknownScope},
	} {
		r := c.do(tc.site, tc.method, tc.path, "", tc.body)
		var e errcode.Body
		if r.status != http.StatusOK {
			r.json(t, &e)
		}
		if r.status != tc.status || e.Code != tc.code {
			t.Errorf("%s %s at %s: %d %s, want %d %s", tc.method, tc.path, tc.site, r.status, r.body, tc.status, tc.code)
		}
	}
}
