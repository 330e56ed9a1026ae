package main

import (
	"bytes"
	"strings"
	"testing"
)

// A run of two packages: one passes with a skip, one has a failed test;
// a third does not build.
const input = `{"Action":"start","Package":"cheops/a"}
{"Action":"run","Package":"cheops/a","Test":"TestOK"}
{"Action":"output","Package":"cheops/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"pass","Package":"cheops/a","Test":"TestOK","Elapsed":0.1}
{"Action":"run","Package":"cheops/a","Test":"TestNeedsRoot"}
{"Action":"output","Package":"cheops/a","Test":"TestNeedsRoot","Output":"=== RUN   TestNeedsRoot\n"}
{"Action":"output","Package":"cheops/a","Test":"TestNeedsRoot","Output":"    harness_test.go:37: real-partition tests run with make e2e\n"}
{"Action":"output","Package":"cheops/a","Test":"TestNeedsRoot","Output":"--- SKIP: TestNeedsRoot (0.00s)\n"}
{"Action":"skip","Package":"cheops/a","Test":"TestNeedsRoot","Elapsed":0}
{"Action":"run","Package":"cheops/a","Test":"TestSilent"}
{"Action":"skip","Package":"cheops/a","Test":"TestSilent","Elapsed":0}
{"Action":"output","Package":"cheops/a","Output":"PASS\n"}
{"Action":"pass","Package":"cheops/a","Elapsed":1.5}
{"Action":"run","Package":"cheops/b","Test":"TestBroken"}
{"Action":"output","Package":"cheops/b","Test":"TestBroken","Output":"    b_test.go:9: want 2, got 3\n"}
{"Action":"fail","Package":"cheops/b","Test":"TestBroken","Elapsed":0.2}
{"Action":"fail","Package":"cheops/b","Elapsed":0.3}
not json: passed through
{"ImportPath":"cheops/c [cheops/c.test]","Action":"build-output","Output":"c.go:3: undefined: x\n"}
{"ImportPath":"cheops/c [cheops/c.test]","Action":"build-fail"}
{"Action":"start","Package":"cheops/c"}
{"Action":"output","Package":"cheops/c","Output":"FAIL\tcheops/c [build failed]\n"}
{"Action":"fail","Package":"cheops/c","Elapsed":0,"FailedBuild":"cheops/c [cheops/c.test]"}
`

func TestSummary(t *testing.T) {
	var out bytes.Buffer
	s := newSummary(&out)
	if err := s.read(strings.NewReader(input)); err != nil {
		t.Fatal(err)
	}
	if s.finish() {
		t.Error("a run with a failed test reported success")
	}
	got := out.String()
	for _, want := range []string{
		"ok  \tcheops/a\t1.5s\n",
		"--- FAIL: TestBroken (cheops/b)\n    b_test.go:9: want 2, got 3\n",
		"not json: passed through\n",
		"skipped: cheops/a TestNeedsRoot: real-partition tests run with make e2e\n",
		"skipped: cheops/a TestSilent: no reason given\n",
		"FAIL\tcheops/c",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	last := lines[len(lines)-1]
	want := "tests: 1 passed, 1 failed, 2 skipped (1: real-partition tests run with make e2e; 1: no reason given); failed packages: cheops/b, cheops/c"
	if last != want {
		t.Errorf("last line\n%s\nwant\n%s", last, want)
	}
}

// A package that dies (panic, timeout) fails the tests it was running.
func TestSummaryPanic(t *testing.T) {
	var out bytes.Buffer
	s := newSummary(&out)
	s.read(strings.NewReader(`{"Action":"run","Package":"cheops/p","Test":"TestHangs"}
{"Action":"output","Package":"cheops/p","Test":"TestHangs","Output":"panic: test timed out after 12m0s\n"}
{"Action":"fail","Package":"cheops/p","Elapsed":720}
`))
	if s.finish() {
		t.Error("a run whose package failed reported success")
	}
	if !strings.Contains(out.String(), "--- FAIL: TestHangs (cheops/p, did not end)\npanic: test timed out") ||
		!strings.HasSuffix(out.String(), "tests: 0 passed, 1 failed, 0 skipped; failed packages: cheops/p\n") {
		t.Errorf("output:\n%s", out.String())
	}
}

// No event at all (go test did not run) is a failure.
func TestSummaryEmpty(t *testing.T) {
	var out bytes.Buffer
	s := newSummary(&out)
	s.read(strings.NewReader("go: cannot find main module\n"))
	if s.finish() || !strings.HasSuffix(out.String(), "; no test ran\n") {
		t.Errorf("output:\n%s", out.String())
	}
}
