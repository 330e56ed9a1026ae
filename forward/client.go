package forward

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The client API's contract: what an API client may send, checked before
// anything is planned or run. Every refusal here is cheops' own JSON
// answer ({"error", "code"}); nothing refused reaches an application or
// the catalog.
//
// Design note — internal headers stay between sites. The agents tell each
// other things in X-Cheops-* headers (HeaderHop: "run it here only",
// HeaderOp: "this is operation X of resource Y", HeaderCoordinate: "record
// this create for me", …). Honoured from an API client, any of them would
// let it write one replica behind the catalog's back. So the client API
// accepts only the X-Cheops-* headers in clientHeaders and refuses every
// other one (400 reserved_header); requests from other sites arrive on
// libp2p streams from member peers only (serveStream), which is the one
// place these headers are read; and no X-Cheops-* header but the scope
// (canonical, set by the agent) is ever sent to an application
// (appHeaders).

// clientHeaders are the X-Cheops-* headers an API client may send.
var clientHeaders = []string{HeaderScope, HeaderReplicaWait}

// allowedMethods are the methods the client API forwards; any other
// (TRACE, CONNECT, WebDAV's, made-up ones) is refused with 405.
var allowedMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// Limits on what is passed to an application. Applications refuse large
// headers themselves (Node.js, behind json-server, answers 431 above
// 16 KiB in all), and that answer would look like the application's; the
// agent refuses first, in its own words.
const (
	// MaxScopeBytes bounds the canonical scope sent to applications in
	// X-Cheops-Scope: 8 KiB is a scope naming some 500 sites, and half
	// of Node.js' limit on all headers together.
	MaxScopeBytes = 8 << 10
	// MaxHeaderBytes bounds the headers of a request passed to an
	// application, the scope included: Node.js' default limit.
	MaxHeaderBytes = 16 << 10
)

// checkClient applies the client API's contract to the head of a request:
// its method and its X-Cheops-* headers. It returns 0 when the request
// may go on.
func checkClient(r *http.Request) (status int, code, msg string) {
	if !slices.Contains(allowedMethods, r.Method) {
		return http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("method %s is not forwarded (allowed: %s)", printable(r.Method), strings.Join(allowedMethods, ", "))
	}
	for k := range r.Header {
		if !isCheopsHeader(k) || slices.Contains(clientHeaders, http.CanonicalHeaderKey(k)) {
			continue
		}
		return http.StatusBadRequest, "reserved_header",
			fmt.Sprintf("header %s is reserved to the agents (clients may send %s)", printable(k), strings.Join(clientHeaders, " and "))
	}
	if n := headerBytes(r.Header); n > MaxHeaderBytes {
		return http.StatusRequestHeaderFieldsTooLarge, "header_too_large",
			fmt.Sprintf("headers of %d bytes are over the limit of %d passed to applications", n, MaxHeaderBytes)
	}
	return 0, "", ""
}

func isCheopsHeader(k string) bool {
	return len(k) >= len("X-Cheops-") && strings.EqualFold(k[:len("X-Cheops-")], "X-Cheops-")
}

// headerBytes is the size of a header block as sent, without the scope
// (which is sent in canonical form and bounded by MaxScopeBytes).
func headerBytes(h http.Header) int {
	n := 0
	for k, vs := range h {
		if http.CanonicalHeaderKey(k) == HeaderScope {
			continue
		}
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// appHeaders removes from a request to an application every X-Cheops-*
// header but the scope.
func appHeaders(h http.Header) {
	for k := range h {
		if isCheopsHeader(k) && http.CanonicalHeaderKey(k) != HeaderScope {
			delete(h, k)
		}
	}
}

// checkJSON refuses a body that says it is JSON and is not: cheops reads
// the bodies of creates and records every write's body, and an
// application's answer to broken JSON is its own (json-server's is an
// HTML page).
func checkJSON(contentType string, body []byte) error {
	if len(body) == 0 || contentType == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return nil
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		return fmt.Errorf("the body is not valid JSON: %v", err)
	}
	return nil
}

// printable quotes a client-given token for an error message.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strconv.Quote(s)
}

// ErrorListener wraps the API's listener so that the answers Go's HTTP
// server writes by itself, before any handler runs — a malformed request
// line or header (400), headers over its limit (431), an unsupported
// transfer coding (501), an HTTP version it does not speak (505) — are
// cheops JSON like every other answer of the agent. Go writes each of
// them in one Write on the connection, in a fixed shape (text/plain,
// Connection: close, no Date) that no handler's answer has; only that
// shape is rewritten.
func ErrorListener(ln net.Listener) net.Listener { return errorListener{ln} }

type errorListener struct{ net.Listener }

func (l errorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &errorConn{Conn: c}, nil
}

type errorConn struct{ net.Conn }

// NetConn is the connection errorConn wraps: a handler that takes the
// connection (spliceUpload) moves a body from the TCP connection under
// it.
func (c *errorConn) NetConn() net.Conn { return c.Conn }

// ReadFrom hands an answer's body to the connection's own ReadFrom
// (net/http calls it for a body of known length once the head is
// written): a body read from another TCP connection then moves inside
// the kernel (splice), never through the agent's memory. Only bodies
// come this way, never one of Go's own error answers (Write).
func (c *errorConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// serverError matches Go's own error answers (net/http server.go).
var serverError = regexp.MustCompile(`\AHTTP/1\.1 ([0-9]{3}) ([^\r\n]*)\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n([^\r\n]*)\z`)

// isServerError tells at a glance whether p may be one of Go's own error
// answers (serverError), by its status line and the line after: every
// answer's head goes through Write, and the expression is only for those
// few that may match.
func isServerError(p []byte) bool {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok {
		return false
	}
	i := bytes.IndexByte(rest, '\n')
	return i >= 0 && bytes.HasPrefix(rest[i+1:], []byte("Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"))
}

func (c *errorConn) Write(p []byte) (int, error) {
	if !isServerError(p) {
		return c.Conn.Write(p)
	}
	m := serverError.FindSubmatch(p)
	if m == nil {
		return c.Conn.Write(p)
	}
	status, _ := strconv.Atoi(string(m[1]))
	code := "bad_request"
	if status == http.StatusRequestHeaderFieldsTooLarge {
		code = "header_too_large"
	}
	body, _ := json.Marshal(map[string]string{"error": string(m[3]), "code": code})
	body = append(body, '\n')
	out := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	if _, err := c.Conn.Write([]byte(out)); err != nil {
		return 0, err
	}
	return len(p), nil
}
