package forward

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
