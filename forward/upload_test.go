package forward

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cheops/internal/testkit"
	"cheops/scope"
)

// uploadApp serves PUT /blob: it answers the digest and length of the
// body it read, and counts the bodies that ended short of their length.
func uploadApp(t *testing.T) (string, *atomic.Int32, *atomic.Int32) {
	t.Helper()
	var whole, short atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil || n != r.ContentLength {
			short.Add(1)
			http.Error(w, fmt.Sprintf("%d of %d bytes: %v", n, r.ContentLength, err), http.StatusBadRequest)
			return
		}
		whole.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"bytes": n, "sha": hex.EncodeToString(h.Sum(nil)), "path": r.URL.RequestURI(),
			"scope": r.Header.Get(HeaderScope), "agent": r.Header.Get("X-Test")})
	}))
	t.Cleanup(app.Close)
	return app.URL, &whole, &short
}

// countedConn counts the bytes read through it (and so through the
// agent's memory); a body the kernel moves (splice) skips it.
type countedConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countedConn) NetConn() net.Conn { return c.Conn }

type countedListener struct {
	net.Listener
	read *atomic.Int64
}

func (l countedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, read: l.read}, nil
}

// uploadFront is site a's forwarder of a default service items at app,
// served as the agent serves its API; read counts the bytes read
// through the client's connections.
func uploadFront(t *testing.T, app string, maxBody int64) (front string, read *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(app)
	if err != nil {
		t.Fatal(err)
	}
	view := scope.View{Local: "a", Sites: map[string]scope.SiteInfo{"a": {State: scope.Up}}}
	svc := Service{Name: "items", URL: u, IDField: "id"}
	f := &Forwarder{cfg: Config{Membership: hopMembership{view: view}, MaxBody: maxBody, SiteTimeout: 10 * time.Second},
		log: slog.New(slog.DiscardHandler), services: map[string]Service{"items": svc}, client: &http.Client{}}
	f.addUpstream(svc)
	t.Cleanup(func() {
		for _, p := range f.reads {
			p.close()
		}
	})
	read = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(f)
	srv.Listener = ErrorListener(countedListener{Listener: srv.Listener, read: read})
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, read
}

func uploadData(n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 31 / 7)
	}
	return data
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// A large streamed PUT reaches the application whole, its body moved
// by the kernel (not read through the client's connection by the
// agent), and its answer is the application's, with the site and
// Connection: close (the connection was taken from the server); a
// small one goes the usual way, on a connection kept alive.
func TestLargeUploadSpliced(t *testing.T) {
	app, whole, _ := uploadApp(t)
	front, read := uploadFront(t, app, 16<<20)
	for _, tc := range []struct {
		size    int
		spliced bool
	}{{3<<20 + 17, true}, {uploadSpliceMin - 1, false}, {uploadSpliceMin, true}} {
		data := uploadData(tc.size)
		read.Store(0)
		req, _ := http.NewRequest(http.MethodPut, front+"/svc/items/blob?x=1", bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Test", "passed on")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Bytes                   int
			Sha, Path, Scope, Agent string
		}
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%d bytes: %s, %v", tc.size, resp.Status, err)
		}
		if got.Bytes != tc.size || got.Sha != sha(data) || got.Path != "/blob?x=1" || got.Scope != "a" || got.Agent != "passed on" {
			t.Errorf("%d bytes: the application got %+v", tc.size, got)
		}
		if resp.Header.Get(HeaderSite) != "a" {
			t.Errorf("%d bytes: %s %q", tc.size, HeaderSite, resp.Header.Get(HeaderSite))
		}
		if resp.Close != tc.spliced {
			t.Errorf("%d bytes: Connection: close %v, want %v", tc.size, resp.Close, tc.spliced)
		}
		if n := read.Load(); tc.spliced && n > 256<<10 {
			t.Errorf("%d bytes: %d read through the agent, want the body moved by the kernel", tc.size, n)
		} else if !tc.spliced && n < int64(tc.size) {
			t.Errorf("%d bytes: %d read through the agent, want the whole body", tc.size, n)
		}
	}
	if n := whole.Load(); n != 3 {
		t.Errorf("the application got %d whole bodies, want 3", n)
	}
}

// rawPut sends a PUT of a length and the bytes of body on a connection
// of its own, headers added, and returns the connection's reader.
func rawPut(t *testing.T, front string, length int, extra string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(front, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "PUT /svc/items/blob HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n", length, extra)
	return c, bufio.NewReader(c)
}

// A client that asks for 100 Continue gets it before it sends the body;
// one whose body ends short of its length leaves the application with a
// body cut short, never one that looks whole; a body over the limit is
// refused (413) before the application sees any of it.
func TestLargeUploadEdges(t *testing.T) {
	app, whole, short := uploadApp(t)
	front, _ := uploadFront(t, app, 4<<20)
	data := uploadData(2 << 20)

	c, br := rawPut(t, front, len(data), "Expect: 100-continue\r\n")
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("before the body: %q, %v", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after 100 Continue: %v %v", resp, err)
	}
	resp.Body.Close()

	c, _ = rawPut(t, front, len(data), "")
	if _, err := c.Write(data[:len(data)/2+5]); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	testkit.Eventually(t, 10*time.Second, "the application sees the cut body", func() error {
		if short.Load() != 1 {
			return fmt.Errorf("%d short bodies", short.Load())
		}
		return nil
	})
	if n := whole.Load(); n != 1 {
		t.Errorf("%d whole bodies, want 1 (the 100-continue one)", n)
	}

	_, br = rawPut(t, front, 5<<20, "")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !bytes.Contains(b, []byte("too_large")) {
		t.Errorf("5 MiB over a 4 MiB limit: %s %s", resp.Status, b)
	}
	if n := whole.Load() + short.Load(); n != 2 {
		t.Errorf("the application was called %d times, want 2 (not for the body over the limit)", n)
	}
}

// TestLargeUploadsInParallel: uploads sent at the same moments by
// several clients, each spliced on its own connections, reach the
// application whole and each answered with its own body's result (a
// pooled application connection shared or crossed would mix them).
func TestLargeUploadsInParallel(t *testing.T) {
	app, whole, _ := uploadApp(t)
	front, _ := uploadFront(t, app, 16<<20)
	const clients, rounds = 6, 3
	errs := make(chan error, clients*rounds)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for r := range rounds {
				data := uploadData(uploadSpliceMin + c*4099 + r*131)
				req, _ := http.NewRequest(http.MethodPut, front+"/svc/items/blob", bytes.NewReader(data))
				req.Header.Set("Content-Type", "application/octet-stream")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				var got struct {
					Bytes int
					Sha   string
				}
				err = json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
				switch {
				case err != nil || resp.StatusCode != http.StatusOK:
					errs <- fmt.Errorf("client %d, round %d: %s, %v", c, r, resp.Status, err)
				case got.Bytes != len(data) || got.Sha != sha(data):
					errs <- fmt.Errorf("client %d, round %d: sent %d bytes, the application answered for %d (%s)", c, r, len(data), got.Bytes, got.Sha)
				case !resp.Close:
					errs <- fmt.Errorf("client %d, round %d: not spliced (no Connection: close)", c, r)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := whole.Load(); n != clients*rounds {
		t.Errorf("the application got %d whole bodies, want %d", n, clients*rounds)
	}
}
