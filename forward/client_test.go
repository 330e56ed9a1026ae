package forward

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheckClient(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		header map[string]string
		status int
		code   string
	}{
		{"plain GET", "GET", nil, 0, ""},
		{"scope and replica wait", "POST", map[string]string{HeaderScope: "{posts: a}", HeaderReplicaWait: "1s"}, 0, ""},
		{"hop", "POST", map[string]string{HeaderHop: "berlin"}, 400, "reserved_header"},
		{"operation", "PATCH", map[string]string{HeaderOp: "e30"}, 400, "reserved_header"},
		{"coordinate", "POST", map[string]string{HeaderCoordinate: "1"}, 400, "reserved_header"},
		{"stream", "GET", map[string]string{headerStream: "1"}, 400, "reserved_header"},
		{"outcome", "PUT", map[string]string{HeaderOutcome: "200"}, 400, "reserved_header"},
		{"made-up", "PUT", map[string]string{"X-Cheops-Operation": "x"}, 400, "reserved_header"},
		{"lower case", "PUT", map[string]string{"x-cheops-hop": "x"}, 400, "reserved_header"},
		{"TRACE", "TRACE", nil, 405, "method_not_allowed"},
		{"made-up method", "FROB", nil, 405, "method_not_allowed"},
		{"large header", "GET", map[string]string{"X-Junk": strings.Repeat("j", MaxHeaderBytes)}, 431, "header_too_large"},
		{"large scope is not counted", "GET", map[string]string{HeaderScope: strings.Repeat("j", MaxHeaderBytes)}, 0, ""},
	} {
		r := httptest.NewRequest(tc.method, "/svc/posts/posts", nil)
		for k, v := range tc.header {
			r.Header[k] = []string{v} // as sent, not canonicalized
		}
		status, code, msg := checkClient(r)
		if status != tc.status || code != tc.code {
			t.Errorf("%s: %d %s %q, want %d %s", tc.name, status, code, msg, tc.status, tc.code)
		}
	}
}

func TestAppHeaders(t *testing.T) {
	h := http.Header{HeaderScope: {"a"}, HeaderHop: {"b"}, HeaderReplicaWait: {"1s"}, "x-cheops-op": {"z"}, "Accept": {"*/*"}}
	appHeaders(h)
	if len(h) != 2 || h.Get(HeaderScope) != "a" || h.Get("Accept") != "*/*" {
		t.Fatalf("headers sent to the application: %v", h)
	}
}

func TestCheckJSON(t *testing.T) {
	for _, tc := range []struct {
		ct, body string
		bad      bool
	}{
		{"application/json", `{"a": 1}`, false},
		{"application/json; charset=utf-8", `{not json`, true},
		{"application/json", ``, false},
		{"application/merge-patch+json", `{not json`, false}, // not ours to judge
		{"text/plain", `{not json`, false},
		{"", `{not json`, false},
	} {
		if err := checkJSON(tc.ct, []byte(tc.body)); (err != nil) != tc.bad {
			t.Errorf("%q %q: %v", tc.ct, tc.body, err)
		}
	}
}

// TestErrorListener: the answers Go's server writes itself, before any
// handler, are cheops JSON; a handler's answers are left alone.
func TestErrorListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{MaxHeaderBytes: 1 << 10, ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, "the handler's own")
		})}
	go srv.Serve(ErrorListener(ln))
	defer srv.Close()
	for _, tc := range []struct {
		name, raw string
		status    int
		code      string
	}{
		{"bad request line", "NOT A REQUEST\r\n\r\n", 400, "bad_request"},
		{"header without colon", "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "bad_request"},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400, "bad_request"},
		{"unknown version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505, "bad_request"},
		{"headers over the limit", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 8<<10) + "\r\n\r\n", 431, "header_too_large"},
		{"handler", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""},
	} {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, tc.raw); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, body)
			continue
		}
		if tc.code == "" {
			if string(body) != "the handler's own" {
				t.Errorf("%s: handler's answer rewritten: %q", tc.name, body)
			}
			continue
		}
		var e map[string]string
		if err := json.Unmarshal(body, &e); err != nil || e["code"] != tc.code || e["error"] == "" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %v %q (%v)", tc.name, resp.Header, body, err)
		}
	}
}

// TestIsServerError: the quick look lets Go's own error answers through
// to the expression and no handler's answer.
func TestIsServerError(t *testing.T) {
	for _, tc := range []struct {
		head string
		want bool
	}{
		{"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request", true},
		{"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large", true},
		{"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", false},
		{"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n\r\nbad", false},
		{"some body bytes", false},
	} {
		if got := isServerError([]byte(tc.head)); got != tc.want {
			t.Errorf("isServerError(%q) = %v, want %v", tc.head, got, tc.want)
		}
	}
}
