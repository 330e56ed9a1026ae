package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the CLI in-process, as main does, and returns stdout, the
// message exitCode would print and the exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	argv := flagsFirst(app, append([]string{"cheops"}, args...))
	code := exitCode(app.Run(argv))
	return out.String(), code
}

// runErr is run, also returning the error text main would print.
func runErr(t *testing.T, args ...string) (stdout, msg string, code int) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(flagsFirst(app, append([]string{"cheops"}, args...)))
	if err != nil {
		msg = err.Error()
	}
	return out.String(), msg, exitCode(err)
}

func TestScopeCheck(t *testing.T) {
	out, code := run(t, "scope", "check", "{posts: paris&berlin , img: (rome)}")
	if code != 0 || out != "{posts: paris & berlin, img: rome}\n" {
		t.Fatalf("code %d, output %q", code, out)
	}

	out, code = run(t, "scope", "check", "paris & berlin ; rome", "--sites", "paris=up,berlin=down,rome=up", "--site", "paris", "--json")
	if code != 0 {
		t.Fatalf("code %d: %s", code, out)
	}
	var res checkResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if res.Local != "paris" || len(res.Plans) != 1 || res.Plans[0].Chosen != 1 || len(res.Plans[0].Targets) != 1 || res.Plans[0].Targets[0].Site != "rome" {
		t.Fatalf("plan = %+v", res)
	}
	if ex := res.Plans[0].Excluded; len(ex) != 2 || ex[0].Site != "paris" || ex[1].Site != "berlin" {
		t.Fatalf("excluded = %+v", ex)
	}
}

// TestScopeCheckHuman pins the human output of a plan.
func TestScopeCheckHuman(t *testing.T) {
	out, code := run(t, "scope", "check", "{posts: (paris | rome) & berlin ; madrid, img: oslo}",
		"--sites", "berlin,paris,rome=suspect,madrid=down,oslo=down", "--service", "posts")
	want := `{posts: (paris | rome) & berlin ; madrid, img: oslo}

planned at berlin; sites: berlin up, madrid down, oslo down, paris up, rome suspect

posts: (paris | rome) & berlin ; madrid
  alternatives:
    1.  (paris | rome) & berlin  complete  <- chosen
    2.  madrid                   cannot run: madrid is unreachable
  targets:
    paris   required  reachable  rtt unmeasured
    berlin  required  reachable  rtt 0.0 ms
    rome    standby   reachable  rtt unmeasured
  excluded:
    madrid  unreachable (down)
`
	if code != 0 || out != want {
		t.Fatalf("code %d, output\n%s\nwant\n%s", code, out, want)
	}
}

func TestScopeCheckMembershipFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.json")
	doc := `{"local": "paris", "sites": {"paris": {"state": "up", "rtt_ms": {"berlin": 12, "rome": 30}}, "berlin": {"state": "up"}, "rome": {"state": "up"}}}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, "scope", "check", "--membership", path, "--json", "rome | berlin")
	if code != 0 {
		t.Fatalf("code %d: %s", code, out)
	}
	var res checkResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	got := res.Plans[0].Targets[0]
	if got.Site != "berlin" || got.RTTms == nil || *got.RTTms != 12 {
		t.Fatalf("nearest = %+v", got)
	}
	// --sites overrides a state of the file; --site the local site.
	out, code = run(t, "scope", "check", "--membership", path, "--sites", "berlin=down", "--site", "rome", "--json", "rome | berlin | paris")
	if code != 0 {
		t.Fatalf("code %d: %s", code, out)
	}
	res = checkResult{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if got := res.Plans[0].Targets; res.Local != "rome" || len(got) != 2 || got[0].Site != "rome" || got[1].Site != "paris" || *got[1].RTTms != 30 {
		t.Fatalf("plan from rome = %+v", res)
	}
}

func TestScopeCheckExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string // a part of the error printed
	}{
		{[]string{"{posts: &berlin}"}, exitBadUsage, "scope: column 9: expected site name, found '&' (bad_scope)\n  {posts: &berlin}\n          ^"},
		{[]string{"a\tb"}, exitBadUsage, "scope: column 3: expected '&', '|', ';' or end of input, found 'b'"},
		{nil, exitBadUsage, "exactly one SCOPE argument, got 0"},
		{[]string{"a", "b"}, exitBadUsage, "exactly one SCOPE argument, got 2"},
		{[]string{"--bogus", "a"}, exitBadUsage, "flag provided but not defined"},
		{[]string{"a", "--sites", "a=sideways"}, exitBadUsage, `--sites: "a=sideways" is not NAME`},
		{[]string{"a", "--sites", "a,"}, exitBadUsage, `--sites: "" is not NAME`},
		{[]string{"a", "--sites", "a&b=up"}, exitBadUsage, `--sites: "a&b=up" is not NAME`},
		{[]string{"a", "--membership", "/nonexistent/m.json"}, exitBadUsage, "membership file: open /nonexistent/m.json"},
		{[]string{"a", "--sites", "a=up", "--site", "b"}, exitBadUsage, "local site b is not among the known sites [a]"},
		{[]string{"tokyo", "--sites", "a=up"}, exitBadUsage, `unknown site: "tokyo" (unknown_site)`},
		{[]string{"tokyo", "--sites", "a=up", "--json"}, exitBadUsage, `unknown site: "tokyo" (unknown_site)`},
		{[]string{"{posts: a}", "--sites", "a", "--service", "images"}, exitBadUsage, `(unbound_service)`},
		{[]string{"a ; b", "--sites", "a=down,b=suspect"}, exitOK, ""},
		{[]string{"a ; b", "--sites", "a=down,b=down"}, exitFailed, "(any service): no site of the scope is reachable: a ; b (unreachable)"},
		{[]string{"{x: a, y: b}", "--sites", "a,b=down", "--json"}, exitFailed, "y: no site of the scope is reachable: b"},
	} {
		args := append([]string{"scope", "check"}, tc.args...)
		_, msg, code := runErr(t, args...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%q: exit %d, message %q; want exit %d, message with %q", tc.args, code, msg, tc.code, tc.msg)
		}
	}
}

func TestScopeCheckBadMembershipFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ doc, msg string }{
		{`{"sites": {"a": {"state": "up"}}`, "unexpected EOF"},
		{`{"sites": {"a": {"state": "fine"}}}`, `site a: state "fine" is not up, suspect, down or unknown`},
		{`{"sites": {"a": {"state": "up", "rtt": {}}}}`, `unknown field "rtt"`},
		{`{"sites": {"a": {"state": "up", "rtt_ms": {"b": -1}}}}`, "site a: negative RTT to b"},
		{`{"sites": {"a b": {"state": "up"}}}`, `"a b" is not a site name`},
		{`{"sites": {"a": {"state": "up"}}}`, "no local site: give --site"},
		{`{"local": "z", "sites": {"a": {"state": "up"}}}`, "local site z is not among the known sites [a]"},
	} {
		path := filepath.Join(dir, "m.json")
		if err := os.WriteFile(path, []byte(tc.doc), 0o600); err != nil {
			t.Fatal(err)
		}
		_, msg, code := runErr(t, "scope", "check", "a", "--membership", path)
		if code != exitBadUsage || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: exit %d, message %q; want 2 and %q", tc.doc, code, msg, tc.msg)
		}
	}
}
