package forward

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cheops/internal/testkit"
)

func TestAppConns(t *testing.T) {
	var conns atomic.Int32
	block := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-block:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 100))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	defer close(block)
	p := newAppConns(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	defer p.close()
	get := func(ctx context.Context, path string, whole bool) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, http.NoBody)
		resp, err := p.roundTrip(ctx, req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if whole {
			b, err := readBody(resp, 1<<20)
			if err == nil && len(b) != 100 {
				t.Errorf("body of %d bytes, want 100", len(b))
			}
			return err
		}
		_, err = resp.Body.Read(make([]byte, 10))
		return err
	}
	ctx := context.Background()
	for range 3 {
		if err := get(ctx, "/", true); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 reads read whole opened %d connections, want 1", n)
	}
	// The application closes its idle connections: the next read is sent
	// again on a new one.
	srv.CloseClientConnections()
	if err := get(ctx, "/", true); err != nil {
		t.Fatalf("after the application closed the idle connection: %v", err)
	}
	// A body not read whole closes its connection.
	before := conns.Load()
	if err := get(ctx, "/", false); err != nil {
		t.Fatal(err)
	}
	if err := get(ctx, "/", true); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load() - before; n != 1 {
		t.Errorf("a body read in part left its connection in the pool (%d new connections, want 1)", n)
	}
	// A client that goes away ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- get(cctx, "/block", true) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, errAborted) {
			t.Errorf("cancelled read: %v, want errAborted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled read still waits for the application")
	}
}

// TestWriteReadHead: the head written by hand says what Request.Write's
// says (method, target, Host, User-Agent, every header and value, read
// back by Go's own parser), and a request it does not write itself is
// written by Request.Write byte for byte.
func TestWriteReadHead(t *testing.T) {
	mk := func(method, target string, h http.Header) *http.Request {
		r, err := http.NewRequest(method, target, http.NoBody)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			r.Header[k] = v
		}
		return r
	}
	write := func(r *http.Request, own bool) []byte {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		var err error
		if own {
			err = writeReadHead(bw, r)
		} else {
			err = r.Write(bw)
		}
		if err != nil || bw.Flush() != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	same := []*http.Request{
		mk(http.MethodGet, "http://127.0.0.1:3000/posts/1", nil),
		mk(http.MethodHead, "http://app:80/a%20b/c?x=1&y=%2F", http.Header{"Accept": {"*/*"}, "X-Cheops-Scope": {"{posts: paris}"}}),
		mk(http.MethodGet, "http://app/", http.Header{"User-Agent": {" curl/8 "}, "X-Many": {"a", " b "}, "Cookie": {"k=v"}}),
		mk(http.MethodGet, "http://app/", http.Header{"User-Agent": {""}}),
		mk(http.MethodGet, "http://app/", http.Header{"Content-Length": {"5"}, "Host": {"other"}, "Trailer": {"X"}}),
	}
	for _, r := range same {
		own, std := write(r, true), write(r, false)
		a, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(own)))
		if err != nil {
			t.Fatalf("%q: %v", own, err)
		}
		b, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(std)))
		if err != nil {
			t.Fatal(err)
		}
		if a.Method != b.Method || a.RequestURI != b.RequestURI || a.Host != b.Host || a.ContentLength != b.ContentLength || !reflect.DeepEqual(a.Header, b.Header) {
			t.Errorf("by hand:\n%s\nRequest.Write:\n%s", own, std)
		}
	}
	odd := []func() *http.Request{
		func() *http.Request {
			r := mk(http.MethodPut, "http://app/x", nil)
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("abc")), 3
			return r
		},
		func() *http.Request {
			return mk(http.MethodGet, "http://app/", http.Header{"X-Bad": {"a\r\nInjected: 1"}})
		},
		func() *http.Request { return mk(http.MethodGet, "http://app/", http.Header{"Bad Name": {"v"}}) },
		func() *http.Request { return mk(http.MethodDelete, "http://app/x", nil) },
		func() *http.Request { return mk(http.MethodPost, "http://app/x", nil) },
		func() *http.Request { r := mk(http.MethodGet, "http://app/", nil); r.Host = "front.example"; return r },
	}
	for _, r := range odd {
		if own, std := write(r(), true), write(r(), false); !bytes.Equal(own, std) {
			t.Errorf("by hand:\n%q\nRequest.Write:\n%q", own, std)
		}
	}
}

// TestAppConnsDoSendsACreateOnce: a write sent on a pooled connection
// (appConns.do, the executor's calls) reaches the application exactly
// once. A connection the application closed while it idled is dropped
// before anything is written on it (alive), and one whose write fails
// before its first byte left goes again on a new connection; a request
// the application read and then dropped without an answer is an error,
// never sent a second time.
func TestAppConnsDoSendsACreateOnce(t *testing.T) {
	var creates, conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		creates.Add(1)
		if r.URL.Path == "/vanish" {
			// Read, then gone without a word (a crash, a reset).
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p := newAppConns(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	defer p.close()
	ctx := context.Background()
	create := func(path string) error {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+path, bytes.NewReader([]byte(`{"n":1}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp, body, err := p.do(ctx, req, 1<<20)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated || string(body) != `{"n":1}` {
			t.Errorf("answer %d %q, want 201 with the body sent", resp.StatusCode, body)
		}
		return nil
	}
	check := func(what string, wantCreates, wantConns int32) {
		t.Helper()
		if n := creates.Load(); n != wantCreates {
			t.Errorf("%s: the application got %d creates, want %d", what, n, wantCreates)
		}
		if n := conns.Load(); n != wantConns {
			t.Errorf("%s: %d connections opened, want %d", what, n, wantConns)
		}
	}
	for range 3 {
		if err := create("/posts"); err != nil {
			t.Fatal(err)
		}
	}
	check("3 creates", 3, 1)

	// The application closes the idle connection: the create goes on a
	// new one, once.
	srv.CloseClientConnections()
	testkit.Eventually(t, 5*time.Second, "the pool's idle connection is seen closed", func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.idle) == 1 && p.idle[0].alive() {
			return errors.New("still alive")
		}
		return nil
	})
	if err := create("/posts"); err != nil {
		t.Fatalf("after the application closed the idle connection: %v", err)
	}
	check("a create after the close", 4, 2)

	// A connection whose write fails before any byte is written (here a
	// pipe closed at its other end): the create goes on a new one, once.
	local, remote := net.Pipe()
	remote.Close()
	ac := &appConn{c: local, br: bufio.NewReader(local), used: time.Now()}
	ac.bw = bufio.NewWriter(ac)
	p.put(ac)
	if err := create("/posts"); err != nil {
		t.Fatalf("after a write that failed at its first byte: %v", err)
	}
	check("a create after a write that failed at its first byte", 5, 2)

	// The application read the create and dropped the connection: the
	// outcome is unknown, and the create is not sent again.
	if err := create("/vanish"); err == nil {
		t.Error("a create the application read and never answered succeeded")
	}
	check("a create read and never answered", 6, 2)
	if err := create("/posts"); err != nil {
		t.Fatal(err)
	}
	check("the next create", 7, 3)
}
