package main

import (
	"bytes"
	"cheops/internal/testkit"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// statusApp answers GET /posts?status=N with status N (a cheops-looking
// JSON error for 400, a redirection for 3xx) and creates on POST.
func statusApp(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, `{"id": 1}`)
			return
		}
		code, _ := strconv.Atoi(r.URL.Query().Get("status"))
		switch {
		case code == 0:
			fmt.Fprint(w, `[]`)
		case code >= 300 && code < 400:
			w.Header().Set("Location", "/elsewhere")
			w.WriteHeader(code)
		default:
			w.WriteHeader(code)
			fmt.Fprint(w, `{"error": "the application says no", "code": "app_code"}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// `cheops request` exits 0 for a 2xx answer, 1 for any other answer (the
// application's, whatever its status, or the agent's failure to run it)
// and 2 for bad usage and requests refused before they ran anywhere.
func TestRequestExitCodes(t *testing.T) {
	a := startAgent(t, "paris", filepath.Join(t.TempDir(), "paris"), "--trust-all", "--service", "posts="+statusApp(t), "--max-body", "64")
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string // in standard error
	}{
		{"2xx read", []string{"GET", "/svc/posts/posts"}, exitOK, "200 OK"},
		{"2xx create", []string{"POST", "/svc/posts/posts", "--data", `{"title": "x"}`, "--scope", "{posts: paris}"}, exitOK, "201 Created"},
		{"application 404", []string{"GET", "/svc/posts/posts?status=404"}, exitFailed, "404"},
		{"application 400, even with a code", []string{"GET", "/svc/posts/posts?status=400"}, exitFailed, "app_code"},
		{"application 500", []string{"GET", "/svc/posts/posts?status=500"}, exitFailed, "500"},
		{"application 302, not followed", []string{"GET", "/svc/posts/posts?status=302"}, exitFailed, "Location: /elsewhere"},
		{"unknown site", []string{"GET", "/svc/posts/posts", "--scope", "{posts: nowhere}"}, exitBadUsage, "unknown_site"},
		{"unbound service", []string{"GET", "/svc/posts/posts", "--scope", "{post: paris}"}, exitBadUsage, "unbound_service"},
		{"bad scope, refused by the command", []string{"GET", "/svc/posts/posts", "--scope", "{posts: &}"}, exitBadUsage, "bad_scope"},
		{"body over the limit", []string{"POST", "/svc/posts/posts", "--data", strings.Repeat("x", 100)}, exitBadUsage, "too_large"},
		{"method not allowed", []string{"TRACE", "/svc/posts/posts"}, exitBadUsage, "405"},
		{"unknown service", []string{"GET", "/svc/nope/x"}, exitFailed, "unknown_service"},
		{"one argument", []string{"GET"}, exitBadUsage, "METHOD and PATH"},
		{"relative path", []string{"GET", "svc/posts"}, exitBadUsage, "must start with /"},
		{"unreadable data file", []string{"POST", "/svc/posts/posts", "--data", "@/nonexistent"}, exitBadUsage, "--data"},
	} {
		cmd := exec.Command(testkit.BuildBinary(t), append([]string{"request", "--agent", a.api}, tc.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", tc.name, code, stderr.String(), tc.code, tc.msg)
		}
	}
	cmd := exec.Command(testkit.BuildBinary(t), "request", "--agent", "http://127.0.0.1:1", "GET", "/svc/posts/posts")
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != exitFailed || !strings.Contains(string(out), "no agent") {
		t.Errorf("no agent: exit %d, %s", cmd.ProcessState.ExitCode(), out)
	}
	// The help states the codes.
	out, _ := exec.Command(testkit.BuildBinary(t), "request", "--help").CombinedOutput()
	for _, want := range []string{"0  the answer is 2xx", "1  any other answer", "2  bad usage, or a request refused locally"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("request --help does not say %q:\n%s", want, out)
		}
	}
}

// An unknown site has one code wherever it is found: in a scope checked
// offline, in a request's scope, in an attach.
func TestUnknownSiteCode(t *testing.T) {
	out, err := exec.Command(testkit.BuildBinary(t), "scope", "check", "--sites", "paris", "--json", "{posts: nowhere}").Output()
	var res checkResult
	if json.Unmarshal(out, &res) != nil || len(res.Plans) != 1 || res.Plans[0].Code != "unknown_site" {
		t.Fatalf("scope check --json: %v %s", err, out)
	}
	a := startAgent(t, "paris", filepath.Join(t.TempDir(), "paris"), "--trust-all", "--service", "posts="+statusApp(t))
	create, err := http.Post(a.api+"/svc/posts/posts", "application/json", strings.NewReader(`{"title": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	create.Body.Close()
	id := create.Header.Get("X-Cheops-Resource")
	if create.StatusCode != http.StatusCreated || id == "" {
		t.Fatalf("create: %d %v", create.StatusCode, create.Header)
	}
	for _, args := range [][]string{
		{"scope", "check", "--sites", "paris", "{posts: nowhere}"},
		{"request", "--agent", a.api, "--scope", "{posts: nowhere}", "GET", "/svc/posts/posts"},
		{"resource", "attach", "--agent", a.api, id, "nowhere"},
	} {
		cmd := exec.Command(testkit.BuildBinary(t), args...)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "unknown_site") || cmd.ProcessState.ExitCode() != exitBadUsage {
			t.Errorf("%v: exit %d, %s; want 2 and unknown_site", args, cmd.ProcessState.ExitCode(), out)
		}
	}
	resp, err := http.Post(a.api+"/v1/resources/"+id+"/attach", "application/json", strings.NewReader(`{"site": "nowhere"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e apiError
	if json.NewDecoder(resp.Body).Decode(&e); resp.StatusCode != http.StatusBadRequest || e.Code != "unknown_site" {
		t.Fatalf("POST attach to an unknown site: %d %+v", resp.StatusCode, e)
	}
}
