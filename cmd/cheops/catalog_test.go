package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/crdt"
)

// mapStore is a one-site catalog.Store in memory, for driving the CLI
// against a real catalog behind catalog.Handler.
type mapStore struct {
	mu       sync.Mutex
	kv       map[string][]byte
	groups   map[string][]string
	watchers []func([]string, string, []byte, bool)
}

func (s *mapStore) Put(ctx context.Context, sites []string, key string, value []byte) error {
	return s.PutBatch(ctx, sites, []string{key}, [][]byte{value})
}

func (s *mapStore) PutBatch(_ context.Context, sites []string, keys []string, values [][]byte) error {
	s.mu.Lock()
	for i, k := range keys {
		s.kv[strings.Join(sites, ",")+"|"+k] = values[i]
		s.groups[strings.Join(sites, ",")] = sites
	}
	fns := slices.Clone(s.watchers)
	s.mu.Unlock()
	for i, k := range keys {
		for _, fn := range fns {
			fn(sites, k, values[i], false)
		}
	}
	return nil
}

func (s *mapStore) Get(_ context.Context, sites []string, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[strings.Join(sites, ",")+"|"+key]
	return v, ok, nil
}

func (s *mapStore) Delete(_ context.Context, sites []string, key string) error {
	s.mu.Lock()
	delete(s.kv, strings.Join(sites, ",")+"|"+key)
	s.mu.Unlock()
	return nil
}

func (s *mapStore) Scan(_ context.Context, prefix string, fn func([]string, string, []byte) error) error {
	return nil // always starts empty
}

func (s *mapStore) Watch(fn func([]string, string, []byte, bool)) func() {
	s.mu.Lock()
	s.watchers = append(s.watchers, fn)
	s.mu.Unlock()
	return func() {}
}

// testAgent is an HTTP server with a real catalog's handler and a stand-in
// for the attach/detach endpoints that records what it was sent.
type testAgent struct {
	*httptest.Server
	cat *catalog.Catalog

	mu       sync.Mutex
	requests []string // "METHOD PATH?QUERY BODY"
	streams  int      // event streams that sent their first bytes
}

// flushWriter counts the event streams that started: the catalog's watch
// is registered before the first flush.
type flushWriter struct {
	http.ResponseWriter
	a       *testAgent
	flushed bool
}

func (f *flushWriter) Flush() {
	if !f.flushed {
		f.flushed = true
		f.a.mu.Lock()
		f.a.streams++
		f.a.mu.Unlock()
	}
	f.ResponseWriter.(http.Flusher).Flush()
}

func (a *testAgent) openStreams() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.streams
}

func newTestAgent(t *testing.T) *testAgent {
	t.Helper()
	cat, err := catalog.New(context.Background(), catalog.Config{Store: &mapStore{kv: map[string][]byte{}, groups: map[string][]string{}}, Self: "paris"})
	if err != nil {
		t.Fatal(err)
	}
	a := &testAgent{cat: cat}
	api := catalog.Handler(cat)
	mux := http.NewServeMux()
	mux.Handle("/v1/", api)
	move := func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Site   string `json:"site"`
			Delete bool   `json:"delete"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Site == "" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error": "body must be {\"site\": \"NAME\"}", "code": "bad_input"}`)
			return
		}
		if in.Site == "tokyo" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error": "unknown site \"tokyo\"", "code": "unknown_site"}`)
			return
		}
		res, err := cat.Get(r.Context(), r.PathValue("id"))
		if err != nil {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error": "no such resource", "code": "not_found"}`)
			return
		}
		res.Sites = append(res.Sites, in.Site)
		res.PerSite[in.Site] = catalog.SiteView{LocalID: "77", Status: catalog.StatusOK}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	}
	mux.HandleFunc("GET /v1/catalog/status", func(w http.ResponseWriter, r *http.Request) {
		match, differ := true, false
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode([]crdt.GroupStatus{{Group: "berlin,paris", Sites: []string{"berlin", "paris"}, Heads: []string{"h1", "h2"}, Height: 42, Merged: 40,
			Members: []crdt.MemberStatus{{Site: "berlin", Connected: true, LastExchange: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), DigestMatch: &differ}}},
			{Group: "paris,rome", Sites: []string{"paris", "rome"}, Heads: []string{"h3"}, Height: 7, Merged: 7,
				Members: []crdt.MemberStatus{{Site: "rome", Connected: false, LastExchange: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), DigestMatch: &match}}}})
	})
	mux.HandleFunc("POST /v1/resources/{id}/attach", move)
	mux.HandleFunc("POST /v1/resources/{id}/detach", move)
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		a.mu.Lock()
		a.requests = append(a.requests, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(body)))
		a.mu.Unlock()
		mux.ServeHTTP(&flushWriter{ResponseWriter: w, a: a}, r)
	}))
	t.Cleanup(func() {
		a.Close()
		cat.Close()
	})
	return a
}

func (a *testAgent) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.requests) == 0 {
		return ""
	}
	return a.requests[len(a.requests)-1]
}

func (a *testAgent) create(t *testing.T, service string, sites []string, locals map[string]string, pending ...string) string {
	t.Helper()
	id := catalog.NewID(time.Now())
	out := map[string]string{}
	for s := range locals {
		out[s] = "201"
	}
	for _, s := range pending {
		out[s] = catalog.OutcomePending
	}
	err := a.cat.Create(context.Background(), catalog.Meta{ID: id, Service: service, Scope: "{" + service + ": " + strings.Join(sites, " & ") + "}",
		Sites: sites, Collection: "/" + service, LocalIDs: locals},
		catalog.Operation{Method: "POST", Path: "/" + service, Targets: sites, Outcomes: out})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCatalogList(t *testing.T) {
	a := newTestAgent(t)
	posts := a.create(t, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1"}, "berlin")
	images := a.create(t, "images", []string{"paris"}, map[string]string{"paris": "5"})

	out, code := run(t, "catalog", "ls", "--agent", a.URL)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if f := strings.Fields(lines[0]); !slices.Equal(f, []string{"ID", "SERVICE", "SCOPE", "SITES", "PENDING"}) {
		t.Fatalf("header %q", lines[0])
	}
	row := lines[1]
	if !strings.HasPrefix(row, posts) || !strings.Contains(row, "{posts: paris & berlin}") ||
		!strings.Contains(row, "berlin=(pending) paris=1") || !strings.HasSuffix(row, " 1") {
		t.Fatalf("posts row %q", row)
	}
	if !strings.HasPrefix(lines[2], images) || !strings.HasSuffix(lines[2], " 0") {
		t.Fatalf("images row %q", lines[2])
	}

	out, code = run(t, "catalog", "ls", "--service", "posts", "--json", "--agent", a.URL)
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["id"] != posts {
		t.Fatalf("exit %d: %s", code, out)
	}
	if got := a.last(); got != "GET /v1/resources?service=posts" {
		t.Fatalf("request %q", got)
	}
	out, code = run(t, "catalog", "ls", "--site", "berlin", "--json", "--agent", a.URL)
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["id"] != posts {
		t.Fatalf("--site berlin: exit %d: %s", code, out)
	}
	if got := a.last(); got != "GET /v1/resources?site=berlin" {
		t.Fatalf("request %q", got)
	}
	// No resources: a header, or an empty JSON array.
	empty := newTestAgent(t)
	if out, code := run(t, "catalog", "ls", "--json", "--agent", empty.URL); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty catalog: exit %d %q", code, out)
	}
}

func TestCatalogGet(t *testing.T) {
	a := newTestAgent(t)
	id := a.create(t, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1"}, "berlin")

	// The flag may follow the argument.
	out, code := run(t, "catalog", "get", id, "--json", "--agent", a.URL)
	var r catalog.Resource
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.ID != id || r.PerSite["berlin"].Status != catalog.StatusPending {
		t.Fatalf("exit %d: %s", code, out)
	}
	if strings.Count(out, "\n") < 5 {
		t.Fatalf("--json is not one indented document: %q", out)
	}

	out, code = run(t, "catalog", "get", "--agent", a.URL, id)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"id:       " + id, "service:  posts", "scope:    {posts: paris & berlin}", "origin:   paris",
		"SITE", "LOCAL ID", "STATUS", "PENDING", "operations:", "POST /posts", "berlin=pending paris=201"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "berlin" && (len(f) < 3 || f[1] != "pending") {
			t.Errorf("berlin's row %q", line)
		}
	}
}

func TestCatalogExitCodes(t *testing.T) {
	a := newTestAgent(t)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown resource", []string{"catalog", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, exitFailed, "not_found"},
		{"malformed id", []string{"catalog", "get", "../etc"}, exitBadUsage, "not a resource id"},
		{"get without id", []string{"catalog", "get"}, exitBadUsage, "one ID"},
		{"get with two ids", []string{"catalog", "get", "a", "b"}, exitBadUsage, "one ID"},
		{"ls with an argument", []string{"catalog", "ls", "posts"}, exitBadUsage, "takes no arguments"},
		{"watch with an argument", []string{"catalog", "watch", "x"}, exitBadUsage, "takes no arguments"},
		{"unknown flag", []string{"catalog", "ls", "--colour"}, exitBadUsage, ""},
		{"attach without site", []string{"resource", "attach", "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, exitBadUsage, "ID and SITE"},
		{"attach bad site name", []string{"resource", "attach", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "a b"}, exitBadUsage, "not a site name"},
		{"attach malformed id", []string{"resource", "detach", "x", "rome"}, exitBadUsage, "not a resource id"},
		{"attach unknown site", []string{"resource", "attach", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "tokyo"}, exitBadUsage, "unknown_site"},
		{"attach unknown resource", []string{"resource", "attach", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "rome"}, exitFailed, "not_found"},
	}
	for _, tc := range cases {
		_, msg, code := runErr(t, append(tc.args, "--agent", a.URL)...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: exit %d %q, want %d with %q", tc.name, code, msg, tc.code, tc.msg)
		}
	}
	// No agent there: the request failed (1), and the message says where
	// it looked.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	for _, args := range [][]string{{"catalog", "ls"}, {"catalog", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, {"catalog", "watch"},
		{"resource", "attach", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "rome"}} {
		_, msg, code := runErr(t, append(args, "--agent", dead.URL)...)
		if code != exitFailed || !strings.Contains(msg, dead.URL) {
			t.Errorf("%v without agent: exit %d %q", args, code, msg)
		}
	}
	if _, msg, code := runErr(t, "catalog", "ls", "--agent", "ftp://x"); code != exitBadUsage {
		t.Errorf("bad --agent: exit %d %q", code, msg)
	}
}

func TestResourceAttachDetach(t *testing.T) {
	a := newTestAgent(t)
	id := a.create(t, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1", "berlin": "2"})

	out, code := run(t, "resource", "attach", id, "rome", "--agent", a.URL)
	if code != 0 || out != id+" now on berlin=2 paris=1 rome=77\n" {
		t.Fatalf("attach: exit %d %q", code, out)
	}
	if got := a.last(); got != "POST /v1/resources/"+id+`/attach {"delete":false,"site":"rome"}` {
		t.Fatalf("request %q", got)
	}
	out, code = run(t, "resource", "detach", "--delete", "--json", id, "berlin", "--agent", a.URL)
	var r catalog.Resource
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.ID != id {
		t.Fatalf("detach: exit %d %q", code, out)
	}
	if got := a.last(); got != "POST /v1/resources/"+id+`/detach {"delete":true,"site":"berlin"}` {
		t.Fatalf("request %q", got)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the CLI writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// watchCLI runs `cheops catalog watch` in the background and waits until
// its event stream is open. cancel interrupts it; done gives its exit code.
func watchCLI(t *testing.T, a *testAgent, args ...string) (out *syncBuffer, cancel func(), done <-chan int) {
	t.Helper()
	app := newApp()
	out = &syncBuffer{}
	app.Writer, app.ErrWriter = out, io.Discard
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	codes := make(chan int, 1)
	open := a.openStreams()
	go func() {
		codes <- exitCode(app.RunContext(ctx, flagsFirst(app, append([]string{"cheops", "catalog", "watch", "--agent", a.URL}, args...))))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for a.openStreams() == open {
		if time.Now().After(deadline) {
			t.Fatal("the watch stream did not open within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return out, cancel, codes
}

func exitOf(t *testing.T, done <-chan int) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end within 10 s")
		return -1
	}
}

// waitLines waits until out has n lines and returns them.
func waitLines(t *testing.T, out *syncBuffer, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		text := strings.TrimSpace(out.String())
		lines := strings.Split(text, "\n")
		if text != "" && len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d lines, have %q", n, text)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCatalogWatch(t *testing.T) {
	a := newTestAgent(t)
	out, cancel, done := watchCLI(t, a, "--json")
	id := a.create(t, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	lines := waitLines(t, out, 2)
	var meta, op catalog.Change
	if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &meta) != nil || json.Unmarshal([]byte(lines[1]), &op) != nil {
		t.Fatalf("not one JSON document per line: %q", lines)
	}
	if meta.ID != id || meta.Kind != catalog.KindMeta || op.ID != id || op.Kind != catalog.KindOp || op.Op == "" {
		t.Fatalf("changes %+v %+v", meta, op)
	}
	cancel()
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("interrupted watch: exit %d", code)
	}

	// Human lines.
	out, cancel, done = watchCLI(t, a)
	id = a.create(t, "images", []string{"paris"}, map[string]string{"paris": "3"})
	lines = waitLines(t, out, 2)
	if lines[0] != id+" held here (created, or its sites changed)" || !strings.HasPrefix(lines[1], id+" operation ") {
		t.Fatalf("human lines %q", lines)
	}
	cancel()
	exitOf(t, done)

	// The agent going away ends the watch as a failed request.
	_, _, done = watchCLI(t, a)
	a.CloseClientConnections()
	if code := exitOf(t, done); code != exitFailed {
		t.Fatalf("stream closed by the agent: exit %d, want %d", code, exitFailed)
	}
}

func TestCatalogStatus(t *testing.T) {
	a := newTestAgent(t)
	out, code := run(t, "catalog", "status", "--agent", a.URL)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if f := strings.Fields(lines[0]); !slices.Equal(f[:7], []string{"GROUP", "HEADS", "HEIGHT", "MERGED", "QUEUED", "FETCHING", "DIRTY"}) {
		t.Fatalf("header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); f[0] != "berlin,paris" || f[1] != "2" || f[2] != "42" || f[3] != "40" || !strings.Contains(lines[1], "berlin: DIFFER") {
		t.Fatalf("first group %q", lines[1])
	}
	if !strings.Contains(lines[2], "rome: same") || !strings.Contains(lines[2], "not connected") {
		t.Fatalf("second group %q", lines[2])
	}
	out, code = run(t, "catalog", "status", "--json", "--agent", a.URL)
	var groups []crdt.GroupStatus
	if code != 0 || json.Unmarshal([]byte(out), &groups) != nil || len(groups) != 2 || *groups[0].Members[0].DigestMatch {
		t.Fatalf("--json: exit %d: %s", code, out)
	}
	if _, code := run(t, "catalog", "status", "extra", "--agent", a.URL); code != 2 {
		t.Fatalf("an argument: exit %d, want 2", code)
	}
}

// After an attach, ls and get show the placement as it is: the scope of
// the new replica set beside its sites, and get the scope it was created
// with.
func TestCatalogShowsThePlacementAfterAnAttach(t *testing.T) {
	a := newTestAgent(t)
	id := a.create(t, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1", "berlin": "2"})
	if err := a.cat.Place(context.Background(), id, catalog.Placement{Sites: []string{"paris", "berlin", "rome"},
		LocalIDs: map[string]string{"paris": "1", "berlin": "2", "rome": "7"}, Scope: "{posts: paris & berlin & rome}"}); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, "catalog", "ls", "--agent", a.URL)
	if code != 0 || !strings.Contains(out, "{posts: paris & berlin & rome}") || !strings.Contains(out, "rome=7") || strings.Contains(out, "{posts: paris & berlin}") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	out, code = run(t, "catalog", "get", "--agent", a.URL, id)
	for _, want := range []string{"scope:    {posts: paris & berlin & rome}", "created with scope: {posts: paris & berlin}"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d: no %q in:\n%s", code, want, out)
		}
	}
}
