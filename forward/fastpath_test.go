package forward

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// flakyListener fails its first Accept calls with EMFILE, as a process
// out of file descriptors does, then accepts.
type flakyListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestFastPathKeepsAcceptingAfterTemporaryErrors: running out of file
// descriptors for a moment does not stop the API (net/http's server
// retries such errors; the fast path's accept loop must too).
func TestFastPathKeepsAcceptingAfterTemporaryErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	flaky := &flakyListener{Listener: ln}
	flaky.failures.Store(3)
	fast := ServeFast(flaky, FastConfig{Take: func(*http.Request) bool { return false }})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "served")
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(fast) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = fast.Shutdown(ctx)
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/anything")
	if err != nil {
		t.Fatalf("GET after %d failed accepts: %v", 3, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "served" {
		t.Fatalf("answer %q, want %q", body, "served")
	}
	select {
	case err := <-served:
		t.Fatalf("the server stopped: %v", err)
	default:
	}
}

// TestRecorderDropsALargeHeadsBuffer: after a request with a large head,
// the next request starts on a small record buffer.
func TestRecorderDropsALargeHeadsBuffer(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("x", 200<<10) + "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() { _, _ = io.WriteString(client, head) }()
	rec := &recorder{c: server, limit: 1 << 20}
	br := bufio.NewReaderSize(rec, 4<<10)
	rec.start(br)
	if _, err := http.ReadRequest(br); err != nil {
		t.Fatal(err)
	}
	if cap(rec.rec) < 200<<10 {
		t.Fatalf("record of the large head: %d bytes", cap(rec.rec))
	}
	rec.start(br)
	if _, err := http.ReadRequest(br); err != nil {
		t.Fatal(err)
	}
	if cap(rec.rec) > maxKeptRecord {
		t.Errorf("record buffer kept at %d bytes after a large head (limit %d)", cap(rec.rec), maxKeptRecord)
	}
}
