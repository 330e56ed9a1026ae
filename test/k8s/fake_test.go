package k8s

import (
	"bufio"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cheops/internal/testkit"
	"cheops/node"
	"cheops/scope"
)

// fakeAPI is a small stand-in for an API server, enough to test what the
// agent does with a kube service without building Kubernetes (these tests
// run in `make test`): HTTPS with its own certificate, a bearer token,
// namespaces created by name, patches recorded with their content type,
// and a watch that sends an event each time trigger is called.
type fakeAPI struct {
	srv   *httptest.Server
	token string

	mu      sync.Mutex
	objects map[string][]byte
	patches []string // "name content-type body"
	events  chan string
}

func newFakeAPI(t *testing.T, token string) *fakeAPI {
	f := &fakeAPI{token: token, objects: map[string][]byte{}, events: make(chan string, 8)}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, `{"kind":"Status","code":401}`, http.StatusUnauthorized)
		return
	}
	const coll = "/api/v1/namespaces"
	name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, coll), "/")
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == coll && r.Method == "GET" && r.URL.Query().Get("watch") == "1":
		f.mu.Unlock()
		defer f.mu.Lock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintln(w, `{"type":"ADDED","object":{"metadata":{"name":"first"}}}`)
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case n := <-f.events:
				fmt.Fprintf(w, `{"type":"ADDED","object":{"metadata":{"name":%q}}}`+"\n", n)
				w.(http.Flusher).Flush()
			}
		}
	case r.URL.Path == coll && r.Method == "GET":
		var items []json.RawMessage
		for _, o := range f.objects {
			items = append(items, o)
		}
		out, _ := json.Marshal(map[string]any{"kind": "NamespaceList", "items": items})
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	case r.URL.Path == coll && r.Method == "POST":
		var o struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if json.Unmarshal(body, &o) != nil || o.Metadata.Name == "" {
			http.Error(w, `{"kind":"Status","code":400}`, http.StatusBadRequest)
			return
		}
		if _, ok := f.objects[o.Metadata.Name]; ok {
			http.Error(w, `{"kind":"Status","code":409}`, http.StatusConflict)
			return
		}
		f.objects[o.Metadata.Name] = body
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	case name != "" && r.Method == "PATCH" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch"):
		// A server-side apply creates what is missing.
		f.patches = append(f.patches, name+" "+r.Header.Get("Content-Type")+" "+string(body))
		if _, ok := f.objects[name]; !ok {
			f.objects[name] = []byte(`{"metadata":{"name":"` + name + `"}}`)
			w.WriteHeader(http.StatusCreated)
		}
		_, _ = w.Write(f.objects[name])
	case name != "" && !strings.Contains(name, "/") && (r.Method == "GET" || r.Method == "PATCH"):
		o, ok := f.objects[name]
		if !ok {
			http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
			return
		}
		if r.Method == "PATCH" {
			f.patches = append(f.patches, name+" "+r.Header.Get("Content-Type")+" "+string(body))
		}
		_, _ = w.Write(o)
	default:
		http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
	}
}

func (f *fakeAPI) state() (names []string, patches []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n := range f.objects {
		names = append(names, n)
	}
	return names, append([]string(nil), f.patches...)
}

// newFakeWorld puts an agent with a kube service in front of a fake API
// server per site; the agent verifies the fake's certificate (CA file)
// and sends it its token.
func newFakeWorld(t *testing.T, names ...string) (*world, map[string]*fakeAPI) {
	w := &world{t: t, sites: map[string]*site{}, names: names}
	fakes := map[string]*fakeAPI{}
	for _, n := range names {
		dir := filepath.Join(t.TempDir(), n)
		_, id, err := node.LoadIdentity(dir)
		if err != nil {
			t.Fatal(err)
		}
		w.ids = append(w.ids, id)
		f := newFakeAPI(t, "tok-"+n)
		fakes[n] = f
		ca := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		w.sites[n] = &site{name: n, dir: dir, kube: &kcluster{name: n, url: f.srv.URL, token: f.token, ca: ca, dir: t.TempDir()}}
	}
	for _, n := range names {
		w.start(n)
	}
	w.waitState(scope.Up, names, names)
	t.Cleanup(func() {
		for _, s := range w.sites {
			if s.agent != nil {
				s.agent.Close()
			}
		}
	})
	return w, fakes
}

// TestKubeServiceWithoutKubernetes checks, against fake API servers, what
// the real-cluster tests check with kubectl: a create by name on every
// site of the scope with the site's own token over verified HTTPS, a
// patch replayed once with its content type by a site that was away, a
// merged list tagged per site, and watches streamed from the local and
// from a remote site.
func TestKubeServiceWithoutKubernetes(t *testing.T) {
	w, fakes := newFakeWorld(t, "a", "b")

	status, body, err := w.agentDo("a", "{kube: a & b}", "POST", "/api/v1/namespaces", []byte(`{"metadata":{"name":"web"}}`))
	if err != nil || status != http.StatusCreated || !strings.Contains(string(body), `"name":"web"`) {
		t.Fatalf("create: %d %s %v", status, body, err)
	}
	for _, s := range []string{"a", "b"} {
		if names, _ := fakes[s].state(); len(names) != 1 || names[0] != "web" {
			t.Fatalf("%s holds %v", s, names)
		}
	}
	id, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", "/api/v1/namespaces/web")
	if !ok {
		t.Fatal("not in a's catalog")
	}

	w.stop("b")
	w.waitState(scope.Down, []string{"a"}, []string{"b"})
	req, _ := http.NewRequest("PATCH", w.server("a", "")+"/api/v1/namespaces/web", strings.NewReader(`{"metadata":{"labels":{"x":"1"}}}`))
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cheops-Sites") != "a=200, b=pending" {
		t.Fatalf("patch: %d %q", resp.StatusCode, resp.Header.Get("X-Cheops-Sites"))
	}
	w.start("b")
	want := `web application/merge-patch+json {"metadata":{"labels":{"x":"1"}}}`
	testkit.Eventually(t, 30*time.Second, "b replays the patch", func() error {
		res, err := w.sites["b"].agent.Catalog().Get(t.Context(), id)
		if err != nil {
			return err
		}
		if p := res.PerSite["b"].Pending; len(p) != 0 {
			return fmt.Errorf("b owes %v", p)
		}
		if _, patches := fakes["b"].state(); len(patches) != 1 || patches[0] != want {
			return fmt.Errorf("b's patches %q", patches)
		}
		return nil
	})

	status, body, err = w.agentDo("a", "{kube: a & b}", "GET", "/api/v1/namespaces", nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("list: %d %s %v", status, body, err)
	}
	if strings.Count(string(body), `"cheops.io/site":"a"`) != 1 || strings.Count(string(body), `"cheops.io/site":"b"`) != 1 {
		t.Fatalf("merged list %s", body)
	}

	for _, c := range []struct{ name, scope, from string }{{"local", "", "a"}, {"remote", "{kube: b}", "b"}} {
		t.Run("watch "+c.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", w.server("a", c.scope)+"/api/v1/namespaces?watch=1", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("X-Cheops-Site") != c.from {
				t.Fatalf("answered by %q", resp.Header.Get("X-Cheops-Site"))
			}
			lines := bufio.NewScanner(resp.Body)
			if !lines.Scan() || !strings.Contains(lines.Text(), `"first"`) {
				t.Fatalf("first event: %q %v", lines.Text(), lines.Err())
			}
			// The stream is open: a later event arrives on it.
			fakes[c.from].events <- "later"
			if !lines.Scan() || !strings.Contains(lines.Text(), `"later"`) {
				t.Fatalf("later event: %q %v", lines.Text(), lines.Err())
			}
		})
	}
}

// TestWritesThroughASiteOutsideTheScope sends a create and a patch by
// name to an agent whose site is outside the scope: a site of the scope
// coordinates each, so the catalog records them and every replica runs
// them once.
func TestWritesThroughASiteOutsideTheScope(t *testing.T) {
	w, fakes := newFakeWorld(t, "a", "b", "c")
	status, body, err := w.agentDo("c", "{kube: a & b}", "POST", "/api/v1/namespaces", []byte(`{"metadata":{"name":"web"}}`))
	if err != nil || status != http.StatusCreated {
		t.Fatalf("create through c: %d %s %v", status, body, err)
	}
	// The coordinator recorded it; the other site's catalog has it soon.
	testkit.Eventually(t, 10*time.Second, "a and b know web", func() error {
		for _, s := range []string{"a", "b"} {
			if _, ok := w.sites[s].agent.Catalog().LookupLocal("kube", s, "/api/v1/namespaces/web"); !ok {
				return fmt.Errorf("%s does not", s)
			}
		}
		return nil
	})
	req, _ := http.NewRequest("PATCH", w.server("c", "{kube: a & b}")+"/api/v1/namespaces/web", strings.NewReader(`{"metadata":{"labels":{"x":"1"}}}`))
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cheops-Sites") != "a=200, b=200" {
		t.Fatalf("patch through c: %d %q", resp.StatusCode, resp.Header.Get("X-Cheops-Sites"))
	}
	for _, s := range []string{"a", "b"} {
		names, patches := fakes[s].state()
		if len(names) != 1 || len(patches) != 1 {
			t.Errorf("%s holds %v, was patched %q", s, names, patches)
		}
		id, ok := w.sites[s].agent.Catalog().LookupLocal("kube", s, "/api/v1/namespaces/web")
		if !ok {
			t.Fatalf("%s's catalog does not know web", s)
		}
		testkit.Eventually(t, 10*time.Second, s+" records the create and the patch", func() error {
			if res, _ := w.sites[s].agent.Catalog().Get(t.Context(), id); len(res.Operations) != 2 {
				return fmt.Errorf("%d operations", len(res.Operations))
			}
			return nil
		})
	}
	if names, _ := fakes["c"].state(); len(names) != 0 {
		t.Errorf("c's cluster holds %v", names)
	}
	if _, ok := w.sites["c"].agent.Catalog().LookupLocal("kube", "c", "/api/v1/namespaces/web"); ok {
		t.Error("c's catalog knows web")
	}
}

// TestServerSideApplyCreates checks that a server-side apply of an object
// nobody recorded is run and recorded as a create: on every site of the
// scope, in the catalog, and replayed by a site that was away.
func TestServerSideApplyCreates(t *testing.T) {
	w, fakes := newFakeWorld(t, "a", "b")
	w.stop("b")
	w.waitState(scope.Down, []string{"a"}, []string{"b"})
	const apply = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ssa\n"
	req, _ := http.NewRequest("PATCH", w.server("a", "{kube: a & b}")+"/api/v1/namespaces/ssa?fieldManager=me", strings.NewReader(apply))
	req.Header.Set("Content-Type", "application/apply-patch+yaml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Cheops-Sites") != "a=201, b=pending" || resp.Header.Get("X-Cheops-Resource") == "" {
		t.Fatalf("apply: %d %q %q", resp.StatusCode, resp.Header.Get("X-Cheops-Sites"), resp.Header.Get("X-Cheops-Resource"))
	}
	if _, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", "/api/v1/namespaces/ssa"); !ok {
		t.Fatal("a's catalog does not know ssa")
	}
	w.start("b")
	want := "ssa application/apply-patch+yaml " + apply
	testkit.Eventually(t, 30*time.Second, "b replays the apply", func() error {
		names, patches := fakes["b"].state()
		if len(names) != 1 || len(patches) != 1 || patches[0] != want {
			return fmt.Errorf("b holds %v, applied %q", names, patches)
		}
		return nil
	})
}
