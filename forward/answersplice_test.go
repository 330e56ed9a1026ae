package forward

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// spliceApp serves /files/big (data, with its length) and /files/short
// (a length of twice what it sends before closing), and counts its
// connections.
func spliceApp(t *testing.T, data []byte) (string, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/files/big":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data)
		case "/files/short":
			c, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", 2*len(data))
			_, _ = bw.Write(data)
			_ = bw.Flush()
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, &conns
}

// A large answer of known length read from the application goes to the
// client whole, the kernel moving it from one connection to the other
// (appBody.spliceTo), and its connection to the application is kept for
// the next read; an answer shorter than its length reaches the client
// cut short (an error, never a whole-looking body) and its connection
// is dropped.
func TestLargeAnswerSplicedToTheClient(t *testing.T) {
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(i * 13 / 7)
	}
	app, conns := spliceApp(t, data)
	h := newHost(t)
	f := hopForwarder(t, h, "a", app, map[string]peer.ID{"a": h.ID()})
	var spliced atomic.Int32
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svc := f.services["files"]
		req := &request{r: r, svc: svc, route: svc.routeOf(r.URL.Path), rawPath: r.URL.Path, canon: "{files: a}"}
		// What readHere streams, with the splice observed.
		out, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, app+req.rawPath, http.NoBody)
		resp, err := f.reads["files"].roundTrip(r.Context(), out)
		if err != nil {
			t.Errorf("%s: %v", r.URL.Path, err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		w.WriteHeader(resp.StatusCode)
		if moved, _ := resp.Body.(*appBody).spliceTo(w); moved {
			spliced.Add(1)
		}
	}))
	front.Listener = ErrorListener(front.Listener)
	front.Start()
	defer front.Close()
	get := func(path string) ([]byte, error) {
		resp, err := front.Client().Get(front.URL + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	for i := range 3 {
		got, err := get("/files/big")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d: %d bytes of %d, whole %v, err %v", i, len(got), len(data), bytes.Equal(got, data), err)
		}
	}
	if n := spliced.Load(); n != 3 {
		t.Errorf("%d of 3 answers spliced", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 spliced answers opened %d connections to the application, want 1 (kept)", n)
	}
	got, err := get("/files/short")
	if err == nil {
		t.Errorf("an answer cut short reached the client as a whole body of %d bytes", len(got))
	}
	if _, err := get("/files/big"); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections to the application, want 2 (the cut one dropped, a new one for the next read)", n)
	}
}

// Through the forwarder's own read (readHere), a large answer arrives
// whole on the client's connection.
func TestReadHereSplices(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	app, _ := spliceApp(t, data)
	h := newHost(t)
	f := hopForwarder(t, h, "a", app, map[string]peer.ID{"a": h.ID()})
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svc := f.services["files"]
		req := &request{r: r, svc: svc, route: svc.routeOf(r.URL.Path), rawPath: r.URL.Path, canon: "{files: a}"}
		if err := f.readHere(w, req, req.rawPath); err != nil {
			t.Error(err)
		}
	}))
	front.Listener = ErrorListener(front.Listener)
	front.Start()
	defer front.Close()
	resp, err := front.Client().Get(front.URL + "/files/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(bufio.NewReader(resp.Body))
	if err != nil || !bytes.Equal(got, data) || resp.Header.Get(HeaderSite) != "a" {
		t.Fatalf("%d bytes of %d, whole %v, site %q, err %v", len(got), len(data), bytes.Equal(got, data), resp.Header.Get(HeaderSite), err)
	}
}
