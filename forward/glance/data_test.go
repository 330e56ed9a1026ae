package glance

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/catalog"
)

// members maps site names to peers, as node.Node does.
type members struct {
	self  string
	peers map[string]peer.ID
}

func (m members) Site() string { return m.self }
func (m members) PeerOf(s string) (peer.ID, bool) {
	p, ok := m.peers[s]
	return p, ok
}
func (m members) SiteOf(p peer.ID) (string, bool) {
	for s, q := range m.peers {
		if q == p {
			return s, true
		}
	}
	return "", false
}

// oneImage is a catalog that holds one image on sites.
type oneImage struct {
	id    string
	sites []string
}

func (c oneImage) LookupLocal(service, site, local string) (string, bool) {
	return "01M8VHM452W14E8ZN6HSH3J7B7", service == "glance" && local == Images+"/"+c.id
}

func (c oneImage) Get(context.Context, string) (catalog.Resource, error) {
	per := map[string]catalog.SiteView{}
	for _, s := range c.sites {
		per[s] = catalog.SiteView{Status: "ok"}
	}
	return catalog.Resource{Service: "glance", Sites: c.sites, PerSite: per}, nil
}

// fakeGlance records the sha256 of each upload; early makes it answer
// 409 before reading any data.
type fakeGlance struct {
	mu    sync.Mutex
	sums  map[string]string
	early bool
}

func (g *fakeGlance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.early {
		http.Error(w, "image has data already", http.StatusConflict)
		return
	}
	h := sha256.New()
	if _, err := io.Copy(h, r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	g.sums[r.URL.Path] = fmt.Sprintf("%x", h.Sum(nil))
	g.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (g *fakeGlance) sum(path string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sums[path]
}

func newHost(t *testing.T) host.Host {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// An upload through a's agent streams to a's Glance and, over libp2p, to
// b's, and so does the staging of an import; c has no peer (unreachable)
// and is reported so; a Glance that answers before reading leaves nobody
// blocked.
func TestUploadStreamsToReplicas(t *testing.T) {
	ha, hb := newHost(t), newHost(t)
	if err := ha.Connect(context.Background(), peer.AddrInfo{ID: hb.ID(), Addrs: hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{"a": ha.ID(), "b": hb.ID()}
	id := "11111111-2222-4333-8444-555555555555"
	cat := oneImage{id: id, sites: []string{"b", "a", "c"}}
	ga, gb := &fakeGlance{sums: map[string]string{}}, &fakeGlance{sums: map[string]string{}}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	var datas []*Data
	for _, s := range []struct {
		site string
		h    host.Host
		g    *fakeGlance
	}{{"a", ha, ga}, {"b", hb, gb}} {
		srv := httptest.NewServer(s.g)
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		d, err := NewData(DataConfig{Service: "glance", URL: u, Host: s.h, Membership: members{self: s.site, peers: peers}, Catalog: cat, Next: next})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		datas = append(datas, d)
	}
	agentA := httptest.NewServer(datas[0])
	t.Cleanup(agentA.Close)

	data := make([]byte, 8<<20+123)
	rand.Read(data)
	want := fmt.Sprintf("%x", sha256.Sum256(data))
	send := func(method, path string) *http.Response {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, method, agentA.URL+path, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	put := func(path string) *http.Response { return send(http.MethodPut, path) }

	for _, r := range []struct{ method, path string }{
		{http.MethodGet, "/svc/glance/v2/images/" + id + "/file"},
		{http.MethodPut, "/svc/glance/v2/images/" + id + "/tags/file"},
		{http.MethodPut, "/svc/other/v2/images/" + id + "/file"},
	} {
		if resp := send(r.method, r.path); resp.StatusCode != http.StatusTeapot {
			t.Fatalf("%s %s, no upload, was not passed on: %d", r.method, r.path, resp.StatusCode)
		}
	}
	resp := put("/scope/%7Bglance:%20a%20&%20b%7D/svc/glance/v2/images/" + id + "/file")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(headerSites) != "a=204, b=204, c=failed" || resp.Header.Get(headerSite) != "a" {
		t.Fatalf("upload: %d %v", resp.StatusCode, resp.Header)
	}
	file := Images + "/" + id + "/file"
	if ga.sum(file) != want || gb.sum(file) != want {
		t.Fatalf("a got %s, b got %s, sent %s", ga.sum(file), gb.sum(file), want)
	}
	// The staging of an import goes the same way, to each replica's
	// stage.
	resp = put("/svc/glance/v2/images/" + id + "/stage")
	stage := Images + "/" + id + "/stage"
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(headerSites) != "a=204, b=204, c=failed" || ga.sum(stage) != want || gb.sum(stage) != want {
		t.Fatalf("stage: %d %v; a got %s, b got %s, sent %s", resp.StatusCode, resp.Header, ga.sum(stage), gb.sum(stage), want)
	}
	if resp := put("/svc/glance/v2/images/22222222-2222-4333-8444-555555555555/file"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("an image the catalog does not know: %d", resp.StatusCode)
	}
	// b's Glance refuses before reading: a still gets all of it, and the
	// upload ends.
	gb.early = true
	resp = put("/svc/glance/v2/images/" + id + "/file")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(headerSites) != "a=204, b=409, c=failed" {
		t.Fatalf("upload with b refusing: %d %v", resp.StatusCode, resp.Header)
	}
}

// A Glance behind HTTPS whose certificate the service's CA signs
// (DataConfig.TLS, from --service-ca) takes the upload; without that CA
// the agent's client refuses the certificate and says the replica failed.
func TestUploadToHTTPSGlance(t *testing.T) {
	h := newHost(t)
	peers := map[string]peer.ID{"a": h.ID()}
	id := "33333333-2222-4333-8444-555555555555"
	g := &fakeGlance{sums: map[string]string{}}
	srv := httptest.NewTLSServer(g)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	data := make([]byte, 1<<20+3)
	rand.Read(data)
	want := fmt.Sprintf("%x", sha256.Sum256(data))
	for _, tc := range []struct {
		name   string
		tls    *tls.Config
		status int
		sites  string
	}{
		{"the service's CA", srv.Client().Transport.(*http.Transport).TLSClientConfig, http.StatusNoContent, "a=204"},
		{"the system's roots", nil, http.StatusBadGateway, "a=failed"},
	} {
		d, err := NewData(DataConfig{Service: "glance", URL: u, TLS: tc.tls, Host: h, Membership: members{self: "a", peers: peers},
			Catalog: oneImage{id: id, sites: []string{"a"}}, Next: http.NotFoundHandler(), RepairInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		d.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/svc/glance/v2/images/"+id+"/file", bytes.NewReader(data)))
		d.Close()
		if w.Code != tc.status || w.Header().Get(headerSites) != tc.sites {
			t.Errorf("%s: %d %v %s", tc.name, w.Code, w.Header(), w.Body)
		}
	}
	if got := g.sum(Images + "/" + id + "/file"); got != want {
		t.Fatalf("Glance got %s, sent %s", got, want)
	}
}
