package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"cheops/agent"
	"cheops/catalog"
	"cheops/forward"
	"cheops/scope"
)

// state is what the applications and the catalogs hold, to show that a
// request changed nothing.
func (c *cluster) state(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, s := range c.sites {
		for _, coll := range []string{"posts", "comments"} {
			data, _ := json.Marshal(s.app.items(t, coll))
			out[name+" app /"+coll] = string(data)
		}
		out[name+" catalog"] = string(c.do(name, "GET", "/v1/resources", "", nil).body)
	}
	return out
}

// doRaw sends a request to a site's agent with the given headers, as
// they are (no canonicalization).
func (c *cluster) doRaw(site, method, path string, header map[string]string, body []byte) response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.sites[site].agent.URL()+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = []string{v}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// sendWire writes bytes on a new connection to a site's agent and reads
// the answer: for requests no HTTP client would send.
func (c *cluster) sendWire(site, raw string) response {
	c.t.Helper()
	u, _ := url.Parse(c.sites[site].agent.URL())
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		c.t.Fatalf("read the answer to %q: %v", raw[:min(len(raw), 40)], err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// TestHostileRequests sends requests a careless or hostile client could
// send through a real agent in front of a real json-server: each is
// answered by cheops in its own JSON with a stable code, and none changes
// any application or any catalog.
func TestHostileRequests(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "replicated"})
	gid := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated || !catalog.ValidID(gid) {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	res := c.settled(t, gid, "paris", "berlin")
	local := res.PerSite["paris"].LocalID
	// An item made straight in paris' application: the catalog does not
	// know it.
	resp, err := http.Post(c.sites["paris"].app.url+"/posts", "application/json", strings.NewReader(`{"title": "untracked"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	unknownGID := catalog.NewID(time.Now())
	op := base64JSON(map[string]any{"op": map[string]any{"id": catalog.NewID(time.Now()), "resource": gid, "method": "PATCH", "path": "/posts/" + gid}})
	before := c.state(t)

	title := map[string]any{"title": "changed"}
	item := "/svc/posts/posts/" + gid
	bigScope := "{posts: " + strings.Repeat("paris | ", 1200) + "paris}" // valid, ~9.6 KiB canonical
	hugeScope := "{posts: " + strings.Repeat("paris & ", 9000) + "paris}"
	type tc struct {
		name         string
		via          string
		method, path string
		header       map[string]string
		body         any
		wire         string // raw bytes instead of an HTTP client's request
		status       int
		code         string
		message      string
	}
	cases := []tc{
		// The agents' own headers, from an API client.
		{name: "create with X-Cheops-Hop", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Hop": "berlin"}, body: title, status: 400, code: "reserved_header", message: "X-Cheops-Hop"},
		{name: "patch a replica with X-Cheops-Hop", method: "PATCH", path: item, header: map[string]string{"X-Cheops-Hop": "paris"}, body: title, status: 400, code: "reserved_header"},
		{name: "patch with a made-up X-Cheops-Operation", method: "PATCH", path: item, header: map[string]string{"X-Cheops-Hop": "paris", "X-Cheops-Operation": "x"}, body: title, status: 400, code: "reserved_header"},
		{name: "patch with a forged X-Cheops-Op", method: "PATCH", path: item, header: map[string]string{"X-Cheops-Op": op}, body: title, status: 400, code: "reserved_header", message: "X-Cheops-Op"},
		{name: "create with X-Cheops-Coordinate", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Coordinate": "1"}, body: title, status: 400, code: "reserved_header"},
		{name: "read with X-Cheops-Stream", method: "GET", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Stream": "1"}, status: 400, code: "reserved_header"},
		{name: "write with X-Cheops-Outcome", method: "PUT", path: item, header: map[string]string{"X-Cheops-Outcome": "200"}, body: title, status: 400, code: "reserved_header"},
		{name: "create with X-Cheops-Local-Id", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Local-Id": "1"}, body: title, status: 400, code: "reserved_header"},
		{name: "lower-case x-cheops-hop", method: "DELETE", path: item, header: map[string]string{"x-cheops-hop": "paris"}, status: 400, code: "reserved_header"},
		{name: "X-Cheops-Resource on a request", method: "DELETE", path: item, header: map[string]string{"X-Cheops-Resource": gid}, status: 400, code: "reserved_header"},
		{name: "create with X-Cheops-Avoid", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Avoid": "paris", "X-Cheops-Scope": "{posts: paris ; berlin}"}, body: title, status: 400, code: "reserved_header"},
		{name: "hop header through berlin", via: "berlin", method: "DELETE", path: item, header: map[string]string{"X-Cheops-Hop": "paris"}, status: 400, code: "reserved_header"},

		// Scopes that do not place the service.
		{name: "typo in the service", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{post: paris & berlin}"}, body: title, status: 400, code: "unbound_service", message: `did you mean "post"`},
		{name: "another service's scope", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{comments: berlin}"}, body: title, status: 400, code: "unbound_service", message: "binds comments"},
		{name: "unbound scope on a known resource", method: "PUT", path: item, header: map[string]string{"X-Cheops-Scope": "{comments: paris}"}, body: title, status: 400, code: "unbound_service"},
		{name: "unbound scope in the query", method: "DELETE", path: item + "?scope=" + url.QueryEscape("{post: paris}"), status: 400, code: "unbound_service"},
		{name: "unbound scope in the path", method: "POST", path: "/scope/" + url.PathEscape("{post: berlin}") + "/svc/posts/posts", body: title, status: 400, code: "unbound_service"},
		{name: "unbound read through berlin", via: "berlin", method: "GET", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{comments: paris}"}, status: 400, code: "unbound_service"},

		// Other bad scopes.
		{name: "malformed scope", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{posts: paris &}"}, body: title, status: 400, code: "bad_scope", message: "column"},
		{name: "unknown site", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{posts: paris & tokyo}"}, body: title, status: 400, code: "unknown_site", message: "tokyo"},
		{name: "large valid scope", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": bigScope}, body: title, status: 431, code: "scope_too_large"},
		{name: "large valid scope on a read", method: "GET", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": bigScope}, status: 431, code: "scope_too_large"},
		{name: "scope over the parser's limit", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": hugeScope}, body: title, status: 400, code: "bad_scope", message: "longer than"},

		// Ids.
		{name: "unknown global id", method: "GET", path: "/svc/posts/posts/" + unknownGID, status: 404, code: "unknown_resource"},
		{name: "update of an unknown global id", method: "PUT", path: "/svc/posts/posts/" + unknownGID, body: title, status: 404, code: "unknown_resource"},
		{name: "unknown global id scoped elsewhere", method: "PUT", path: "/svc/posts/posts/" + unknownGID, header: map[string]string{"X-Cheops-Scope": "{posts: berlin}"}, body: title, status: 404, code: "unknown_resource"},
		{name: "malformed id", method: "GET", path: "/svc/posts/posts/no-such-thing", status: 404, code: "unknown_resource"},
		{name: "almost a global id", method: "GET", path: "/svc/posts/posts/" + strings.ToLower(unknownGID), status: 404, code: "unknown_resource"},
		{name: "malformed id on berlin", method: "GET", path: "/svc/posts/posts/999", header: map[string]string{"X-Cheops-Scope": "{posts: berlin}"}, status: 404, code: "unknown_resource"},
		{name: "write by a local id", method: "PUT", path: "/svc/posts/posts/" + local, body: title, status: 400, code: "local_id"},
		{name: "delete by a local id", method: "DELETE", path: "/svc/posts/posts/" + local, status: 400, code: "local_id"},
		{name: "patch by a made-up id", method: "PATCH", path: "/svc/posts/posts/abc", body: title, status: 400, code: "local_id"},
		{name: "path traversal", method: "DELETE", path: "/svc/posts/posts/..%2F..%2Fdb", status: 400, code: "local_id"},
		{name: "read by a local id on two sites", method: "GET", path: "/svc/posts/posts/" + local, header: map[string]string{"X-Cheops-Scope": "{posts: paris & berlin}"}, status: 400, code: "local_id"},

		// Methods.
		{name: "TRACE", method: "TRACE", path: "/svc/posts/posts", status: 405, code: "method_not_allowed"},
		{name: "made-up method", method: "FROB", path: item, status: 405, code: "method_not_allowed"},
		{name: "WebDAV method", method: "PROPFIND", path: "/svc/posts/posts", status: 405, code: "method_not_allowed"},

		// Bodies.
		{name: "invalid JSON create", method: "POST", path: "/svc/posts/posts", body: []byte(`{"title": `), status: 400, code: "bad_json"},
		{name: "invalid JSON replicated create", method: "POST", path: "/svc/posts/posts", header: map[string]string{"X-Cheops-Scope": "{posts: paris & berlin}"}, body: []byte(`{not json`), status: 400, code: "bad_json"},
		{name: "invalid JSON update", method: "PUT", path: item, body: []byte(`{"title": "x"`), status: 400, code: "bad_json"},
		{name: "oversized body", method: "POST", path: "/svc/posts/posts", body: []byte(`"` + strings.Repeat("x", 70<<10) + `"`), status: 413, code: "too_large"},
		{name: "attach without a site", method: "POST", path: "/v1/resources/" + gid + "/attach", body: []byte(`{`), status: 400, code: "bad_input"},

		// Headers and request lines.
		{name: "large header", method: "GET", path: "/svc/posts/posts", header: map[string]string{"X-Junk": strings.Repeat("j", 20<<10)}, status: 431, code: "header_too_large"},
		{name: "large header on a write", method: "PUT", path: item, header: map[string]string{"Cookie": strings.Repeat("c", 20<<10)}, body: title, status: 431, code: "header_too_large"},
		{name: "bad request line", wire: "POST /svc/posts/posts\r\n\r\n", status: 400, code: "bad_request"},
		{name: "garbage", wire: "\x16\x03\x01 hello\r\n\r\n", status: 400, code: "bad_request"},
		{name: "header without a colon", wire: "DELETE " + item + " HTTP/1.1\r\nHost: x\r\nX-Cheops-Hop paris\r\n\r\n", status: 400, code: "bad_request"},
		{name: "unknown HTTP version", wire: "DELETE " + item + " HTTP/3.0\r\nHost: x\r\n\r\n", status: 505, code: "bad_request"},
		{name: "headers over the server's limit", wire: "DELETE " + item + " HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 1<<20+8<<10) + "\r\n\r\n", status: 431, code: "header_too_large"},

		// Places that do not exist.
		{name: "unknown service", method: "POST", path: "/svc/post/posts", body: title, status: 404, code: "unknown_service"},
		{name: "unknown endpoint", method: "DELETE", path: "/v1/everything", status: 404, code: "not_found"},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			via := tc.via
			if via == "" {
				via = "paris"
			}
			var r response
			if tc.wire != "" {
				r = c.sendWire(via, tc.wire)
			} else {
				var data []byte
				switch b := tc.body.(type) {
				case nil:
				case []byte:
					data = b
				default:
					data, _ = json.Marshal(b)
				}
				r = c.doRaw(via, tc.method, tc.path, tc.header, data)
			}
			var e struct{ Error, Code string }
			if err := json.Unmarshal(r.body, &e); err != nil {
				t.Fatalf("%d, not cheops JSON: %q", r.status, truncate(r.body))
			}
			if r.status != tc.status || e.Code != tc.code || !strings.Contains(e.Error, tc.message) || e.Error == "" {
				t.Fatalf("%d %s %q; want %d %s %q", r.status, e.Code, e.Error, tc.status, tc.code, tc.message)
			}
		})
	}
	after := c.state(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed:\nbefore %s\nafter  %s", k, v, after[k])
		}
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

func base64JSON(v any) string {
	data, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(data)
}

// TestGlobalIDsInEveryAnswer: single-site reads and lists, through any
// agent and whatever the scope, show the global id of every item the
// catalog knows, and tag the others; a create's Location is the agent's
// own URL with the global id.
func TestGlobalIDsInEveryAnswer(t *testing.T) {
	c := newCluster(t, "paris", "berlin", "rome")
	// berlin's application holds an item of its own first, so local ids
	// differ between the sites.
	resp, err := http.Post(c.sites["berlin"].app.url+"/posts", "application/json", strings.NewReader(`{"title": "untracked"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "replicated"})
	gid := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if loc, want := r.header.Get("Location"), c.sites["paris"].agent.URL()+"/svc/posts/posts/"+gid; loc != want {
		t.Fatalf("Location %q, want %q", loc, want)
	}
	// Through rome, outside the scope: a coordinated create.
	r = c.do("rome", "POST", "/svc/posts/posts", "{posts: berlin}", map[string]any{"title": "berlin's"})
	berlinGID := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated || r.header.Get("Location") != c.sites["rome"].agent.URL()+"/svc/posts/posts/"+berlinGID {
		t.Fatalf("coordinated create: %d %v %s", r.status, r.header, r.body)
	}
	c.settled(t, gid, "paris", "berlin")
	c.settled(t, berlinGID, "berlin")

	for _, tc := range []struct{ via, scope string }{
		{"berlin", ""},
		{"paris", "{posts: berlin}"},
		{"rome", "{posts: berlin}"},
		{"berlin", "{posts: paris | berlin}"},
	} {
		r := c.do(tc.via, "GET", "/svc/posts/posts", tc.scope, nil)
		var items []map[string]any
		r.json(t, &items)
		if r.header.Get(forward.HeaderSite) != "berlin" {
			t.Fatalf("%s %q: answered by %q", tc.via, tc.scope, r.header.Get(forward.HeaderSite))
		}
		got := map[string]any{}
		for _, it := range items {
			got[fmt.Sprint(it["title"])] = it["id"]
			if it["title"] == "untracked" && it[forward.UntrackedField] != true {
				t.Fatalf("%s %q: the untracked item is not tagged: %v", tc.via, tc.scope, it)
			}
			if it["title"] != "untracked" && it[forward.UntrackedField] != nil {
				t.Fatalf("%s %q: a tracked item is tagged: %v", tc.via, tc.scope, it)
			}
		}
		if got["replicated"] != gid || got["berlin's"] != berlinGID || got["untracked"] != json.Number("1") && got["untracked"] != float64(1) {
			t.Fatalf("%s %q: %s", tc.via, tc.scope, r.body)
		}
	}
	// A read by berlin's local id of a resource it holds shows the global
	// id.
	res := c.settled(t, gid, "berlin")
	r = c.do("paris", "GET", "/svc/posts/posts/"+res.PerSite["berlin"].LocalID, "{posts: berlin}", nil)
	var one map[string]any
	r.json(t, &one)
	if r.status != http.StatusOK || one["id"] != gid || r.header.Get(forward.HeaderResource) != gid {
		t.Fatalf("read by local id: %d %v %s", r.status, r.header, r.body)
	}
}

// TestFallbackWhileSuspect: with c's agent stopped and the other sites
// still counting c suspect (not yet down), ';' and '|' run the next
// alternative within the same request — a create included, since nothing
// reached c — and the answer says where it ran and why not on c.
func TestFallbackWhileSuspect(t *testing.T) {
	// c stays suspect for the whole test: down only after 1,000 misses.
	c := newClusterTuned(t, nil, func(cfg *agent.Config) { cfg.Node.DownAfter = 1000 }, "a", "b", "c")
	c.stop("c")
	c.waitState(scope.Suspect, []string{"a", "b"}, []string{"c"})
	fellBack := func(r response) bool { return strings.HasPrefix(r.header.Get(forward.HeaderFallback), "c: ") }

	// A create scoped {posts: c ; a} through a runs on a.
	r := c.do("a", "POST", "/svc/posts/posts", "{posts: c ; a}", map[string]any{"title": "fell back to a"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSite) != "a" || !fellBack(r) || r.header.Get(forward.HeaderSites) != "a=201" {
		t.Fatalf("create {posts: c ; a}: %d %v %s", r.status, r.header, r.body)
	}
	gid := r.header.Get(forward.HeaderResource)
	if res := c.settled(t, gid, "a"); len(res.PerSite) != 1 || res.PerSite["a"].LocalID == "" {
		t.Fatalf("recorded as %+v", res)
	}
	// Through a, to b: coordinated by b after c failed.
	r = c.do("a", "POST", "/svc/posts/posts", "{posts: c ; b}", map[string]any{"title": "fell back to b"})
	if r.status != http.StatusCreated || r.header.Get(forward.HeaderSite) != "b" || !fellBack(r) {
		t.Fatalf("create {posts: c ; b}: %d %v %s", r.status, r.header, r.body)
	}
	if n := len(c.sites["a"].app.items(t, "posts")); n != 1 {
		t.Fatalf("a's application holds %d posts", n)
	}
	if n := len(c.sites["b"].app.items(t, "posts")); n != 1 {
		t.Fatalf("b's application holds %d posts", n)
	}
	// Reads: ';' through a, and '|' through b when c is the nearer
	// choice or not (either way b answers).
	for _, tc := range []struct{ via, scope string }{{"a", "{posts: c ; b}"}, {"b", "{posts: c | a}"}, {"a", "{posts: c}"}} {
		r := c.do(tc.via, "GET", "/svc/posts/posts", tc.scope, nil)
		switch {
		case tc.scope == "{posts: c}":
			// No alternative: nothing to fall back to.
			if r.status != http.StatusBadGateway || !fellBack(r) {
				t.Fatalf("read %s: %d %v %s", tc.scope, r.status, r.header, r.body)
			}
		case r.status != http.StatusOK || r.header.Get(forward.HeaderSite) == "c":
			t.Fatalf("read %s through %s: %d %v %s", tc.scope, tc.via, r.status, r.header, r.body)
		}
	}
	// A create with no alternative, through a site outside its scope:
	// nothing can record it (as when c is down).
	r = c.do("a", "POST", "/svc/posts/posts", "{posts: c}", map[string]any{"title": "for c"})
	if r.status != http.StatusServiceUnavailable || !fellBack(r) {
		t.Fatalf("create {posts: c}: %d %v %s", r.status, r.header, r.body)
	}
}

// TestApplicationSeesOnlyTheScope: an application behind an agent
// receives X-Cheops-Scope in canonical form and no other X-Cheops-*
// header, whether the request came from a client of its own agent or from
// another site's agent.
func TestApplicationSeesOnlyTheScope(t *testing.T) {
	var mu sync.Mutex
	var seen []http.Header
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `[]`)
	}))
	defer echo.Close()
	c := newClusterWith(t, map[string]string{"echo": echo.URL}, "paris", "berlin")
	for _, via := range []string{"paris", "berlin"} {
		r := c.doRaw(via, "GET", "/svc/echo/things", map[string]string{"X-Cheops-Scope": "{ echo :paris }", "X-Cheops-Replica-Wait": "1s"}, nil)
		if r.status != http.StatusOK || r.header.Get(forward.HeaderSite) != "paris" {
			t.Fatalf("via %s: %d %v %s", via, r.status, r.header, r.body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("the application got %d requests", len(seen))
	}
	for i, h := range seen {
		for k := range h {
			if strings.HasPrefix(k, "X-Cheops-") && k != forward.HeaderScope {
				t.Errorf("request %d: the application got %s: %v", i, k, h)
			}
		}
		if got := h.Get(forward.HeaderScope); got != "{echo: paris}" {
			t.Errorf("request %d: X-Cheops-Scope %q", i, got)
		}
	}
}
