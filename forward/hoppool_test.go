package forward

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"cheops/catalog"
	"cheops/internal/testkit"
	"cheops/scope"
)

// keptHops is two sites a and b on real libp2p hosts, b serving its
// application app to a's hops on both protocols, and the count of the
// streams b was opened.
type keptHops struct {
	a, b   *Forwarder
	hb     host.Host
	opened atomic.Int64
}

func newKeptHops(t testing.TB, app string) *keptHops {
	t.Helper()
	ha, hb := newHost(t), newHost(t)
	if err := ha.Connect(context.Background(), peer.AddrInfo{ID: hb.ID(), Addrs: hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{"a": ha.ID(), "b": hb.ID()}
	k := &keptHops{a: hopForwarder(t, ha, "a", app, peers), hb: hb}
	k.serveWith(hopForwarder(t, hb, "b", app, peers))
	t.Cleanup(k.a.hops.close)
	return k
}

// serveWith makes fb serve the streams b is opened from now on.
func (k *keptHops) serveWith(fb *Forwarder) {
	k.b = fb
	handler := func(s network.Stream) {
		k.opened.Add(1)
		fb.serveStream(s)
	}
	k.hb.SetStreamHandler(ProtocolKeepAlive, handler)
	k.hb.SetStreamHandler(Protocol, handler)
}

// get reads path of the files service on b through a's hop.
func (k *keptHops) get(t *testing.T, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://cheops/svc/files"+path, http.NoBody)
	req.Header.Set(HeaderScope, "{files: b}")
	resp, body, err := k.a.sendRemote(context.Background(), "b", req, 1<<20)
	if err != nil {
		t.Fatalf("GET %s on b: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

func filesApp(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// Hops to a site, one after another, go on the one stream the first
// opened; a hop whose request body the other side did not read whole
// ends its stream ("Connection: close"), and the next opens another.
func TestHopsKeepTheirStream(t *testing.T) {
	app := filesApp(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "file %s", r.URL.Path)
	})
	k := newKeptHops(t, app)
	for i := range 20 {
		status, body := k.get(t, fmt.Sprintf("/files/%d", i))
		if want := fmt.Sprintf("file /files/%d", i); status != http.StatusOK || body != want {
			t.Fatalf("hop %d: %d %q, want 200 %q", i, status, body, want)
		}
	}
	if n := k.opened.Load(); n != 1 {
		t.Fatalf("20 hops one after another opened %d streams, want 1", n)
	}

	// b refuses an unknown service before reading the body: the stream
	// cannot carry another request.
	req, _ := http.NewRequest(http.MethodPost, "http://cheops/svc/nope/x", strings.NewReader(strings.Repeat("x", 32<<10)))
	req.Header.Set(HeaderScope, "{nope: b}")
	resp, _, err := k.a.sendRemote(context.Background(), "b", req, 1<<20)
	if err != nil || resp.StatusCode != http.StatusNotFound || !resp.Close {
		t.Fatalf("POST to an unknown service: %v, %+v (want 404 with Connection: close)", err, resp)
	}
	if status, body := k.get(t, "/files/after"); status != http.StatusOK || body != "file /files/after" {
		t.Fatalf("after a closed stream: %d %q", status, body)
	}
	if n := k.opened.Load(); n != 2 {
		t.Fatalf("a hop after a closed stream: %d streams opened in all, want 2", n)
	}
}

// A slow answer holds up no other hop to the same site: each exchange
// has a stream of its own while it lasts.
func TestAHopWaitsForNoOther(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	app := filesApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/files/slow" {
			close(arrived)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprintf(w, "file %s", r.URL.Path)
	})
	k := newKeptHops(t, app)
	k.get(t, "/files/warm") // a stream is idle in the pool
	slow := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://cheops/svc/files/files/slow", http.NoBody)
		req.Header.Set(HeaderScope, "{files: b}")
		_, body, err := k.a.sendRemote(context.Background(), "b", req, 1<<20)
		if err != nil {
			slow <- err.Error()
			return
		}
		slow <- string(body)
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow read did not reach the application")
	}
	for i := range 5 {
		if status, body := k.get(t, fmt.Sprintf("/files/fast%d", i)); status != http.StatusOK || body != fmt.Sprintf("file /files/fast%d", i) {
			t.Fatalf("a read beside the slow one: %d %q", status, body)
		}
	}
	select {
	case got := <-slow:
		t.Fatalf("the slow read ended before it was released: %q", got)
	default:
	}
	close(release)
	if got := <-slow; got != "file /files/slow" {
		t.Fatalf("the slow read: %q", got)
	}
	if n := k.opened.Load(); n != 2 {
		t.Fatalf("%d streams opened, want 2 (one held by the slow read, one for the others)", n)
	}
}

// A kept stream the other side ended while it was idle (its agent
// restarted its forwarder) is never used again: the next hop goes on a
// new stream and is answered.
func TestAStreamEndedWhileIdleIsNotUsed(t *testing.T) {
	app := filesApp(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "file %s", r.URL.Path)
	})
	k := newKeptHops(t, app)
	for range 3 {
		k.get(t, "/files/x")
	}
	old := k.b
	old.waiters.close() // what Close does to the streams waiting
	k.serveWith(hopForwarder(t, k.hb, "b", app, map[string]peer.ID{"a": k.a.cfg.Host.ID(), "b": k.hb.ID()}))
	for i := range 3 {
		if status, body := k.get(t, fmt.Sprintf("/files/%d", i)); status != http.StatusOK || body != fmt.Sprintf("file /files/%d", i) {
			t.Fatalf("hop %d after the restart: %d %q", i, status, body)
		}
	}
	if n := k.opened.Load(); n != 2 {
		t.Fatalf("%d streams opened, want 2", n)
	}
}

// BenchmarkHop is one read through a's hop from b's application (on
// loopback, an answer of a few bytes), on streams kept between hops and
// on a new stream per hop (a receiver speaking only Protocol).
func BenchmarkHop(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "file %s", r.URL.Path)
	}))
	defer app.Close()
	b.Run("direct", func(b *testing.B) {
		// The application alone, as the hop reads it: the reference.
		f := hopForwarder(b, newHost(b), "b", app.URL, nil)
		req, _ := http.NewRequest(http.MethodGet, app.URL+"/files/x", http.NoBody)
		cpu0 := processCPU()
		defer func() { b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op") }()
		for b.Loop() {
			resp, err := f.reads["files"].roundTrip(context.Background(), req)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := readBody(resp, 1<<20); err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
		}
	})
	for _, kept := range []bool{true, false} {
		name := "kept"
		if !kept {
			name = "stream-per-hop"
		}
		b.Run(name, func(b *testing.B) {
			k := newKeptHops(b, app.URL)
			if !kept {
				k.hb.RemoveStreamHandler(ProtocolKeepAlive)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://cheops/svc/files/files/x", http.NoBody)
			req.Header.Set(HeaderScope, "{files: b}")
			cpu0 := processCPU()
			for b.Loop() {
				if _, _, err := k.a.sendRemote(context.Background(), "b", req, 1<<20); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// A stream idle longer than the pool's timeout is dropped, not used: the
// next hop opens a new one, and the other side's wait on the old one
// ends.
func TestAStreamIdleTooLongIsDropped(t *testing.T) {
	app := filesApp(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "file %s", r.URL.Path)
	})
	k := newKeptHops(t, app)
	k.a.hops.mu.Lock()
	k.a.hops.maxIdle = 20 * time.Millisecond
	k.a.hops.mu.Unlock()
	k.get(t, "/files/1")
	time.Sleep(40 * time.Millisecond) // the stream is now idle too long
	if status, body := k.get(t, "/files/2"); status != http.StatusOK || body != "file /files/2" {
		t.Fatalf("after the idle timeout: %d %q", status, body)
	}
	if n := k.opened.Load(); n != 2 {
		t.Fatalf("%d streams opened, want 2 (the idle one dropped)", n)
	}
	testkit.Eventually(t, 10*time.Second, "b waits on the kept stream only", func() error {
		k.b.waiters.mu.Lock()
		defer k.b.waiters.mu.Unlock()
		if n := len(k.b.waiters.waiting); n > 1 {
			return fmt.Errorf("b waits on %d streams", n)
		}
		return nil
	})
}

// processCPU is this process's CPU time (user and system): a hop's cost
// in CPU, beside its wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A plain hop may answer for longer than SiteTimeout (a download the
// requester reads at its pace), also on a stream whose previous request
// was not plain: that one's answer is bounded by a write deadline, which
// must not outlive it. Here b's SiteTimeout is 300 ms, a refused
// operation sets the deadline, and the file read through the same
// stream right after takes ~1 s to come from b's application.
func TestAPlainHopAfterAnOperationIsNotCutByItsDeadline(t *testing.T) {
	data := make([]byte, 4<<20) // 64 times the body limit: streamed
	for i := range data {
		data[i] = byte(i * 3)
	}
	ha, hb := newHost(t), newHost(t)
	if err := ha.Connect(context.Background(), peer.AddrInfo{ID: hb.ID(), Addrs: hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{"a": ha.ID(), "b": hb.ID()}
	k := &keptHops{a: hopForwarder(t, ha, "a", deadURL(t), peers), hb: hb}
	k.serveWith(hopForwarder(t, hb, "b", pacedFile(t, data, 16, 60*time.Millisecond), peers))
	t.Cleanup(k.a.hops.close)

	op, _ := http.NewRequest(http.MethodPut, "http://cheops/svc/files/files/big", http.NoBody)
	op.Header.Set(HeaderScope, "{files: b}")
	op.Header.Set(HeaderOp, "not an operation")
	resp, _, err := k.a.sendRemote(context.Background(), "b", op, 1<<20)
	if err != nil || resp.StatusCode != http.StatusBadRequest || resp.Close {
		t.Fatalf("a malformed operation: %v, %+v (want 400, the stream kept)", err, resp)
	}

	res := catalog.Resource{ID: "01HZZZZZZZZZZZZZZZZZZZZZZ2", Service: "files", Sites: []string{"b"},
		PerSite: map[string]catalog.SiteView{"b": {LocalID: "/files/big", Status: catalog.StatusOK}}}
	sc, _ := scope.Parse("b")
	r := httptest.NewRequest(http.MethodGet, "/svc/files/files/big", nil)
	req := &request{r: r, svc: k.a.services["files"], route: k.a.services["files"].routeOf("/files/big"), rawPath: "/files/big", scope: sc}
	w := httptest.NewRecorder()
	k.a.onResource(w, req, res)
	if w.Code != http.StatusOK || w.Header().Get(HeaderSite) != "b" || !bytes.Equal(w.Body.Bytes(), data) {
		t.Fatalf("the file after the operation: %d from %q, %d of %d bytes (fell back: %q)", w.Code, w.Header().Get(HeaderSite), w.Body.Len(), len(data), w.Header().Get(HeaderFallback))
	}
	if n := k.opened.Load(); n != 1 {
		t.Fatalf("the operation and the file went on %d streams, want 1 (the case tested is one stream)", n)
	}
}

// A peer that is not a member site gets no answer on either hop
// protocol: its stream is reset before its request is read, and b's
// application never sees it, even on a stream a member keeps open beside.
func TestAHopFromANonMemberIsRefused(t *testing.T) {
	var seen atomic.Int64
	app := filesApp(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		fmt.Fprintf(w, "file %s", r.URL.Path)
	})
	k := newKeptHops(t, app)
	k.get(t, "/files/member") // a member's stream, kept
	stranger := newHost(t)
	if err := stranger.Connect(context.Background(), peer.AddrInfo{ID: k.hb.ID(), Addrs: k.hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []protocol.ID{ProtocolKeepAlive, Protocol} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := stranger.NewStream(ctx, k.hb.ID(), proto)
		cancel()
		if err != nil {
			t.Fatalf("%s: open: %v", proto, err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		req := "GET /svc/files/files/stranger HTTP/1.1\r\nHost: cheops\r\nX-Cheops-Scope: b\r\nX-Cheops-Hop: a\r\n\r\n"
		if _, err := s.Write([]byte(req)); err != nil {
			t.Fatalf("%s: write: %v", proto, err)
		}
		if answer, err := io.ReadAll(s); err == nil || len(answer) > 0 {
			t.Errorf("%s: a non-member got %q, %v (want the stream reset, nothing read)", proto, answer, err)
		}
		s.Reset()
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the application saw %d requests, want 1 (the member's)", n)
	}
	if status, body := k.get(t, "/files/again"); status != http.StatusOK || body != "file /files/again" {
		t.Errorf("the member after the stranger: %d %q", status, body)
	}
}
