package forward

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/catalog"
	"cheops/scope"
)

// hopMembership is a fixed view of up sites, each with its peer.
type hopMembership struct {
	view  scope.View
	peers map[string]peer.ID
}

func (m hopMembership) Site() string                    { return m.view.Local }
func (m hopMembership) View() scope.View                { return m.view }
func (m hopMembership) PeerOf(s string) (peer.ID, bool) { p, ok := m.peers[s]; return p, ok }
func (m hopMembership) SiteOf(p peer.ID) (string, bool) {
	for s, id := range m.peers {
		if id == p {
			return s, true
		}
	}
	return "", false
}

// fileRoutes is a client-named service of files at /files/{name}, whose
// answers the agent never rewrites (as Glance's image data).
type fileRoutes struct{}

func (fileRoutes) Route(path string) Route {
	rest, ok := strings.CutPrefix(path, "/files")
	if !ok {
		return Route{}
	}
	return Route{Collection: "/files", ID: strings.Trim(rest, "/")}
}
func (fileRoutes) Name([]byte) (string, bool)    { return "", false }
func (fileRoutes) Stream(*http.Request) bool     { return false }
func (fileRoutes) Copy(b []byte) ([]byte, error) { return b, nil }
func (fileRoutes) Merge(*http.Request, []SiteAnswer) ([]byte, string, error) {
	return nil, "", io.EOF
}

// pacedFile serves GET /files/big: size bytes in chunks, one every pace,
// flushed as they go — an answer that lasts longer than SiteTimeout.
func pacedFile(t *testing.T, data []byte, chunks int, pace time.Duration) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/files/big" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		step := len(data) / chunks
		for i := 0; i < len(data); i += step {
			end := min(i+step, len(data))
			if _, err := w.Write(data[i:end]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(pace)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// deadURL is an address nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// hopForwarder is site's forwarder of the files service at app, its
// buffered paths bounded by a body limit far below the file's size.
func hopForwarder(t testing.TB, h host.Host, site, app string, peers map[string]peer.ID) *Forwarder {
	t.Helper()
	u, err := url.Parse(app)
	if err != nil {
		t.Fatal(err)
	}
	view := scope.View{Local: site, Sites: map[string]scope.SiteInfo{}}
	for s := range peers {
		view.Sites[s] = scope.SiteInfo{State: scope.Up}
	}
	svc := Service{Name: "files", URL: u, Routes: fileRoutes{}}
	f := &Forwarder{cfg: Config{Host: h, Membership: hopMembership{view, peers}, MaxBody: 64 << 10, SiteTimeout: 300 * time.Millisecond},
		log: slog.New(slog.DiscardHandler), services: map[string]Service{"files": svc}, client: &http.Client{}}
	f.addUpstream(svc)
	t.Cleanup(func() {
		for _, p := range f.reads {
			p.close()
		}
	})
	return f
}

// A read of a resource of a client-named service is streamed from its
// nearest holder that answers, never read whole: a file 64 times the
// body limit, whose answer lasts longer than SiteTimeout, arrives whole
// from the local application, and from the other holder's through the
// hop when the local application is down. When no holder's application
// answers, the answer says so (a remote agent's "could not reach my
// application" is never passed on as the file).
func TestReadOfResourceStreamsFromHolders(t *testing.T) {
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	ha, hb := newHost(t), newHost(t)
	if err := ha.Connect(context.Background(), peer.AddrInfo{ID: hb.ID(), Addrs: hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{"a": ha.ID(), "b": hb.ID()}
	app := pacedFile(t, data, 16, 60*time.Millisecond)
	dead := deadURL(t)
	res := catalog.Resource{ID: "01HZZZZZZZZZZZZZZZZZZZZZZ1", Service: "files", Sites: []string{"a", "b"},
		PerSite: map[string]catalog.SiteView{"a": {LocalID: "/files/big", Status: catalog.StatusOK}, "b": {LocalID: "/files/big", Status: catalog.StatusOK}}}

	read := func(f *Forwarder) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/svc/files/files/big", nil)
		sc, _ := scope.Parse("a & b")
		req := &request{r: r, svc: f.services["files"], route: f.services["files"].routeOf("/files/big"), rawPath: "/files/big", scope: sc}
		w := httptest.NewRecorder()
		f.onResource(w, req, res)
		return w
	}
	for _, tc := range []struct {
		name       string
		appA, appB string
		status     int
		site       string
		fellBack   string // the sites the read fell back from
		whole      bool
	}{
		{"local holder", app, dead, http.StatusOK, "a", "", true},
		{"local application down: the other holder, through the hop", dead, app, http.StatusOK, "b", "a", true},
		{"no holder's application answers", dead, dead, http.StatusBadGateway, "", "a b", false},
	} {
		fa := hopForwarder(t, ha, "a", tc.appA, peers)
		fb := hopForwarder(t, hb, "b", tc.appB, peers)
		hb.SetStreamHandler(Protocol, fb.serveStream)
		w := read(fa)
		got := w.Body.Bytes()
		var fellBack []string
		for _, part := range strings.Split(w.Header().Get(HeaderFallback), "; ") {
			if site, _, ok := strings.Cut(part, ": "); ok {
				fellBack = append(fellBack, site)
			}
		}
		if w.Code != tc.status || w.Header().Get(HeaderSite) != tc.site || w.Header().Get(HeaderResource) != res.ID || strings.Join(fellBack, " ") != tc.fellBack {
			t.Errorf("%s: %d, fell back from %q, %v %.200s", tc.name, w.Code, fellBack, w.Header(), got)
		}
		if tc.whole != bytes.Equal(got, data) {
			t.Errorf("%s: got %d bytes of %d (whole: %v)", tc.name, len(got), len(data), bytes.Equal(got, data))
		}
	}
}
