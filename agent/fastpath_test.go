package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cheops/forward"
)

// appLog is an application on loopback that records the requests it
// receives (method and path, in order).
type appLog struct {
	mu   sync.Mutex
	seen []string
}

func (l *appLog) requests() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

func startLoggedApp(t testing.TB) (*httptest.Server, *appLog) {
	log := &appLog{}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		log.mu.Lock()
		log.seen = append(log.seen, r.Method+" "+r.URL.RequestURI())
		log.mu.Unlock()
		switch {
		case r.Method == http.MethodPost:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"id": 7, "got": %q}`, body)
		case r.URL.Path == "/posts/1":
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Header().Set("Etag", `W/"1"`)
			w.Header().Set("X-Powered-By", "test")
			fmt.Fprint(w, `{"id": 1, "title": "read me"}`)
		case r.URL.Path == "/posts":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `[{"id": 1, "title": "read me"}, {"id": 2, "title": "and me"}]`)
		case r.URL.Path == "/text":
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, strings.Repeat("some text ", 50))
		case r.URL.Path == "/chunked":
			// No length: chunked, in several writes.
			w.Header().Set("Content-Type", "text/csv")
			for i := range 3 {
				fmt.Fprintf(w, "row %d,%s\n", i, strings.Repeat("x", 1500))
				w.(http.Flusher).Flush()
			}
		case r.URL.Path == "/small-chunked":
			w.Header().Set("Content-Type", "text/csv")
			fmt.Fprint(w, "a,b\n")
			w.(http.Flusher).Flush()
		case r.URL.Path == "/big":
			// Over the size moved in the kernel (splice) on both paths.
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", "1048576")
			_, _ = w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<16))
		case r.URL.Path == "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(app.Close)
	return app, log
}

func startFastAgent(t testing.TB, token string) (*Agent, *appLog) {
	t.Helper()
	app, log := startLoggedApp(t)
	return startParisFor(t, app.URL, token), log
}

// startParisFor starts paris's agent alone, its service posts the
// application at appURL.
func startParisFor(t testing.TB, appURL, token string) *Agent {
	t.Helper()
	dirs, trust := identities(t, "paris")
	cfg := testConfig("paris", dirs["paris"], trust)
	cfg.APIToken = token
	posts, err := forward.NewService("posts", appURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Services = []forward.Service{posts}
	a, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// rawConn is a client connection that reads each answer's bytes as
// they came.
type rawConn struct {
	t   *testing.T
	c   net.Conn
	rec bytes.Buffer
	br  *bufio.Reader
}

func dialRaw(t *testing.T, a *Agent) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(a.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c}
	rc.br = bufio.NewReader(io.TeeReader(c, &rc.rec))
	return rc
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// answer reads one answer to a request of method and returns it as it
// came (Date blanked); the server must have sent nothing after it.
func (rc *rawConn) answer(method string) (*http.Response, string) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// rec holds what the reader held already (the previous answer's end).
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		rc.t.Fatalf("read answer: %v", err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		rc.t.Fatalf("read answer body: %v", err)
	}
	got := rc.rec.String()
	if n := rc.br.Buffered(); n > 0 {
		got = got[:len(got)-n] // pipelined answers after this one
	}
	rc.rec.Reset()
	if n := rc.br.Buffered(); n > 0 {
		b, _ := rc.br.Peek(n)
		rc.rec.Write(b)
	}
	return resp, dateLine.ReplaceAllString(got, "Date: -\r\n")
}

var dateLine = regexp.MustCompile(`Date: [^\r]*\r\n`)

// TestFastPathAnswersAsNetHTTP: a plain local read gets, on the fast
// path, the answer net/http's server gives it on a connection handed
// over (status line, headers in order, body: byte for byte but the
// date); requests that are not plain local reads are not taken.
func TestFastPathAnswersAsNetHTTP(t *testing.T) {
	a, _ := startFastAgent(t, "")
	for _, tc := range []struct {
		name, method, target, headers string
		fast                          bool
	}{
		{"item", "GET", "/svc/posts/posts/1", "", true},
		{"item HEAD", "HEAD", "/svc/posts/posts/1", "", true},
		{"collection, scope header", "GET", "/svc/posts/posts", "X-Cheops-Scope: {posts: paris}\r\n", true},
		{"scope in the path", "GET", "/scope/%7Bposts%3A%20paris%7D/svc/posts/posts/1", "", true},
		{"scope in the query", "GET", "/svc/posts/posts/1?scope=%7Bposts%3A%20paris%7D&a=b", "", true},
		{"text", "GET", "/svc/posts/text", "", true},
		{"chunked answer", "GET", "/svc/posts/chunked", "", true},
		{"small chunked answer", "GET", "/svc/posts/small-chunked", "", true},
		{"no content", "GET", "/svc/posts/empty", "", true},
		{"large body", "GET", "/svc/posts/big", "", true},
		{"large body HEAD", "HEAD", "/svc/posts/big", "", true},
		{"unknown item", "GET", "/svc/posts/posts/99", "", true},
		{"client headers", "GET", "/svc/posts/posts/1", "Accept: application/json\r\nX-Trace: a\r\nX-Trace: b\r\n", true},
		{"Content-Length 0", "GET", "/svc/posts/posts/1", "Content-Length: 0\r\n", true},
		{"reserved header", "GET", "/svc/posts/posts/1", "X-Cheops-Op: x\r\n", false},
		{"unknown site", "GET", "/svc/posts/posts/1", "X-Cheops-Scope: {posts: tokyo}\r\n", false},
		{"bad scope", "GET", "/svc/posts/posts/1", "X-Cheops-Scope: {posts: \r\n", false},
		{"unknown service", "GET", "/svc/nope/x", "", false},
		{"global id", "GET", "/svc/posts/posts/01M83EAYD8HPZEEZZ8C9EQP524", "", false},
		{"not clean", "GET", "/svc/posts//posts/1", "", false},
		{"API", "GET", "/v1/health", "", false},
		{"Connection close", "GET", "/svc/posts/posts/1", "Connection: close\r\n", false},
		{"Expect", "GET", "/svc/posts/posts/1", "Expect: 100-continue\r\n", false},
		{"two hosts", "GET", "/svc/posts/posts/1", "Host: other\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.method + " " + tc.target + " HTTP/1.1\r\nHost: agent\r\n" + tc.headers + "\r\n"
			// net/http's answer: on a connection handed over by a
			// first request the fast path does not take.
			slow := dialRaw(t, a)
			slow.send("GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n")
			slow.answer("GET")
			before := a.FastReads()
			slow.send(req)
			wantResp, want := slow.answer(tc.method)
			if n := a.FastReads() - before; n != 0 {
				t.Fatalf("a handed-over connection served %d reads on the fast path", n)
			}
			fast := dialRaw(t, a)
			fast.send(req)
			gotResp, got := fast.answer(tc.method)
			if served := a.FastReads() - before; served != map[bool]int64{true: 1, false: 0}[tc.fast] {
				t.Errorf("served %d on the fast path, want fast=%v", served, tc.fast)
			}
			got, want = unchunked(t, gotResp, got), unchunked(t, wantResp, want)
			if got != want {
				t.Errorf("fast path answer:\n%q\nnet/http's:\n%q", got, want)
			}
		})
	}
}

// unchunked is raw, an answer as it came, with a chunked body decoded:
// where the chunks fall depends on when the application's writes reach
// the agent (both paths pass them on as they arrive), so only the head
// and the bytes are compared.
func unchunked(t *testing.T, resp *http.Response, raw string) string {
	t.Helper()
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		return raw
	}
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of head in %q", raw)
	}
	decoded, err := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(body)))
	if err != nil {
		t.Fatalf("chunked body %q: %v", body, err)
	}
	return head + "\r\n\r\n[chunked] " + string(decoded)
}

// TestFastPathPipelined: requests written at once on one connection are
// answered in order; a POST among them hands the connection to net/http,
// which answers it and the reads after it.
func TestFastPathPipelined(t *testing.T) {
	a, log := startFastAgent(t, "")
	rc := dialRaw(t, a)
	read := func(path string) string { return "GET /svc/posts" + path + " HTTP/1.1\r\nHost: agent\r\n\r\n" }
	body := `{"title": "new"}`
	post := fmt.Sprintf("POST /svc/posts/posts HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	before := a.FastReads()
	rc.send(read("/posts/1") + read("/text") + read("/posts/1"))
	for i, want := range []int{200, 200, 200} {
		if resp, raw := rc.answer("GET"); resp.StatusCode != want {
			t.Fatalf("answer %d: %s", i, raw)
		}
	}
	rc.send(read("/posts") + post + read("/posts/1") + read("/text"))
	for i, want := range []int{200, 201, 200, 200} {
		method := "GET"
		if i == 1 {
			method = "POST"
		}
		if resp, raw := rc.answer(method); resp.StatusCode != want {
			t.Fatalf("answer %d after the first three: %s", i, raw)
		}
	}
	if n := a.FastReads() - before; n != 4 {
		t.Errorf("%d reads on the fast path, want 4 (those before the POST)", n)
	}
	if _, metrics := get(t, a.URL()+"/metrics", nil); !strings.Contains(metrics, "\ncheops_api_fast_reads_total 4\n") {
		t.Errorf("metrics do not count the 4 fast reads")
	}
	got := log.requests()
	want := []string{"GET /posts/1", "GET /text", "GET /posts/1", "GET /posts", "POST /posts", "GET /posts/1", "GET /text"}
	if !slices.Equal(got, want) {
		t.Errorf("the application saw %q, want %q", got, want)
	}
}

// TestFastPathNoSmuggling: a read whose head frames a body, however
// ambiguously, is never served on the fast path, and what its body
// holds never reaches the application as a request of its own.
func TestFastPathNoSmuggling(t *testing.T) {
	a, log := startFastAgent(t, "")
	hidden := "GET /svc/posts/smuggled HTTP/1.1\r\nHost: agent\r\n\r\n"
	chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden)
	for _, tc := range []struct{ name, payload string }{
		{"CL and TE", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk},
		{"TE and CL", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + chunk},
		{"two CLs", fmt.Sprintf("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n%s", len(hidden), hidden)},
		{"CL body on GET", fmt.Sprintf("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nContent-Length: %d\r\n\r\n%s", len(hidden), hidden)},
		{"TE chunked on GET", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk},
		{"TE not chunked", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: gzip\r\n\r\n" + hidden},
		{"TE with spaces", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding : chunked\r\n\r\n" + chunk},
		{"after a fast read", "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\n\r\n" +
			"GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := len(log.requests())
			rc := dialRaw(t, a)
			rc.send(tc.payload)
			// Read whatever comes until the agent closes or goes quiet.
			_ = rc.c.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = io.Copy(io.Discard, rc.br)
			for _, r := range log.requests()[seen:] {
				if strings.Contains(r, "smuggled") {
					t.Fatalf("the application received the hidden request: %q", log.requests()[seen:])
				}
			}
		})
	}
	if n := a.FastReads(); n != 1 {
		t.Errorf("%d reads on the fast path, want 1 (the plain read before one)", n)
	}
}

// TestFastPathLimits: a head over net/http's 1 MiB gets its 431 as
// cheops JSON; a head that does not arrive within the header timeout
// closes the connection, as net/http's server does.
func TestFastPathLimits(t *testing.T) {
	old := apiReadHeaderTimeout
	apiReadHeaderTimeout = 300 * time.Millisecond
	defer func() { apiReadHeaderTimeout = old }()
	a, log := startFastAgent(t, "")

	rc := dialRaw(t, a)
	big := "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nX-Big: " + strings.Repeat("b", 1<<20+8192) + "\r\n\r\n"
	go func() { _, _ = io.WriteString(rc.c, big) }()
	resp, raw := rc.answer("GET")
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(raw, `"code":"header_too_large"`) {
		t.Errorf("a head over 1 MiB: %q", raw)
	}

	for _, first := range []bool{true, false} {
		rc := dialRaw(t, a)
		if !first {
			rc.send("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\n\r\n")
			rc.answer("GET")
		}
		rc.send("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\n") // never ends
		start := time.Now()
		_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.Copy(io.Discard, rc.br)
		if err != nil || n != 0 || time.Since(start) > 3*time.Second {
			t.Errorf("slow head (first request %v): read %d bytes, %v after %v; want the connection closed within the timeout", first, n, err, time.Since(start))
		}
	}
	if got := log.requests(); len(got) != 1 {
		t.Errorf("the application saw %q, want one read", got)
	}
}

// TestFastPathToken: without the API's token a read gets net/http's 401
// and never reaches the application; with it, the fast path serves it.
func TestFastPathToken(t *testing.T) {
	a, log := startFastAgent(t, "s3cret")
	rc := dialRaw(t, a)
	rc.send("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer wrong\r\n\r\n")
	if resp, raw := rc.answer("GET"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %s", raw)
	}
	if a.FastReads() != 0 || len(log.requests()) != 0 {
		t.Fatalf("a read without the token: %d fast, application saw %q", a.FastReads(), log.requests())
	}
	for _, auth := range []string{"Authorization: Bearer s3cret\r\n", ""} {
		rc := dialRaw(t, a)
		target := "/svc/posts/posts/1"
		if auth == "" {
			target += "?token=s3cret"
		}
		rc.send("GET " + target + " HTTP/1.1\r\nHost: agent\r\n" + auth + "\r\n")
		if resp, raw := rc.answer("GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("token %q: %s", auth, raw)
		}
	}
	if a.FastReads() != 2 {
		t.Errorf("%d reads on the fast path, want 2", a.FastReads())
	}
}

// TestFastPathCloseWithIdleConnections: Close returns at once with
// connections idle on the fast path and on net/http's server, and
// closes them.
func TestFastPathCloseWithIdleConnections(t *testing.T) {
	a, _ := startFastAgent(t, "")
	var conns []*rawConn
	for i := range 4 {
		rc := dialRaw(t, a)
		if i == 3 {
			rc.send("GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n")
		} else {
			rc.send("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\n\r\n")
		}
		rc.answer("GET")
		conns = append(conns, rc)
	}
	silent := dialRaw(t, a) // connected, never a byte
	conns = append(conns, silent)
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with idle connections", d)
	}
	for i, rc := range conns {
		_ = rc.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := rc.br.ReadByte(); err == nil || isTimeout(err) {
			t.Errorf("connection %d still open after Close: %v", i, err)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// BenchmarkLocalRead: a GET of one item through the agent on one
// keep-alive connection, on the fast path and on a connection handed
// over to net/http's server (what every read took before), the
// application a Go server in the same process.
func BenchmarkLocalRead(b *testing.B) {
	for _, path := range []string{"fast", "net/http"} {
		b.Run(path, func(b *testing.B) {
			a, _ := startFastAgent(b, "")
			benchReads(b, a, path)
		})
	}
}

// benchReads times a GET of posts/1 placed on paris, sent to a on one
// keep-alive connection, on the fast path or (path "net/http") on a
// connection a first request handed over to net/http's server; it
// reports the process's CPU per read and fails when the reads did not
// take the path named.
func benchReads(b *testing.B, a *Agent, path string) {
	c, err := net.Dial("tcp", strings.TrimPrefix(a.URL(), "http://"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	do := func(req string) {
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	if path == "net/http" {
		do("GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n")
	}
	req := "GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\nX-Cheops-Scope: {posts: paris}\r\nUser-Agent: bench\r\n\r\n"
	do(req)
	before := a.FastReads()
	cpu0 := processCPU()
	b.ResetTimer()
	for range b.N {
		do(req)
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	if fast := a.FastReads() - before; (fast > 0) != (path == "fast") {
		b.Fatalf("%d fast reads on the %s path", fast, path)
	}
}

// TestFastPathFailedReadNotAskedTwice: when this site's application
// fails a read the fast path took, the connection goes to net/http's
// server with the failure noted, and the handler starts from its
// fallback: the application is asked as often as for the same read sent
// past the fast path (Connection: close), not once more — a hung
// application would otherwise cost the client SiteTimeout twice.
func TestFastPathFailedReadNotAskedTwice(t *testing.T) {
	var asked atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close() // no answer at all
		}
	}))
	t.Cleanup(app.Close)
	a := startParisFor(t, app.URL, "")

	askedFor := func(extra string) (int32, *http.Response) {
		t.Helper()
		before := asked.Load()
		rc := dialRaw(t, a)
		rc.send("GET /svc/posts/posts/1 HTTP/1.1\r\nHost: agent\r\n" + extra + "\r\n")
		resp, _ := rc.answer("GET")
		return asked.Load() - before, resp
	}
	past, pastResp := askedFor("Connection: close\r\n")
	fastBefore := a.FastReads()
	fast, fastResp := askedFor("")
	if a.FastReads() != fastBefore {
		t.Fatalf("the fast path served a read its application failed")
	}
	if past == 0 {
		t.Fatalf("the application was not asked")
	}
	if fast != past {
		t.Errorf("application asked %d times for a read the fast path took, %d for the same read past it", fast, past)
	}
	if fastResp.StatusCode != pastResp.StatusCode || fastResp.StatusCode < 500 {
		t.Errorf("status %d on the fast path's connection, %d past it (want the same 5xx)", fastResp.StatusCode, pastResp.StatusCode)
	}
	if got := fastResp.Header.Get(forward.HeaderFallback); got == "" || got != pastResp.Header.Get(forward.HeaderFallback) {
		t.Errorf("fallback header %q on the fast path's connection, %q past it", got, pastResp.Header.Get(forward.HeaderFallback))
	}
}
