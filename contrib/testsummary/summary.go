package main

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // of build-output and build-fail
	Test       string
	Elapsed    float64
	Output     string
}

// test is what the summary keeps of one test until it ends.
type test struct {
	output []string
}

// skip is one skipped test and its reason.
type skip struct {
	pkg, test, reason string
}

// summary accumulates the events of one `go test -json` run.
type summary struct {
	out            io.Writer
	running        map[string]*test    // package + " " + test
	pkgOutput      map[string][]string // output of a package outside its tests
	buildOutput    map[string][]string // compiler output, by import path
	passed, failed int
	skipped        []skip
	failedPkgs     []string
	events         int
	progress       bool // print a line as each test ends
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, running: map[string]*test{}, pkgOutput: map[string][]string{},
		buildOutput: map[string][]string{}}
}

// line takes one line of input: an event, or anything else (printed).
func (s *summary) line(b []byte) {
	var e event
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &e) != nil || e.Action == "" {
		fmt.Fprintf(s.out, "%s\n", b)
		return
	}
	s.events++
	key := e.Package + " " + e.Test
	switch {
	case e.Action == "build-output":
		s.buildOutput[e.ImportPath] = append(s.buildOutput[e.ImportPath], e.Output)
	case e.Action == "build-fail": // the package's own fail event follows
		fmt.Fprintf(s.out, "build failed: %s\n%s", e.ImportPath, strings.Join(s.buildOutput[e.ImportPath], ""))
		delete(s.buildOutput, e.ImportPath)
	case e.Test == "":
		s.packageEvent(e)
	case e.Action == "run":
		s.running[key] = &test{}
	case e.Action == "output":
		if t := s.running[key]; t != nil {
			t.output = append(t.output, e.Output)
		}
	case e.Action == "pass":
		s.passed++
		if s.progress {
			fmt.Fprintf(s.out, "--- PASS: %s (%s, %.1fs)\n", e.Test, e.Package, e.Elapsed)
		}
		delete(s.running, key)
	case e.Action == "fail":
		s.failed++
		if t := s.running[key]; t != nil {
			fmt.Fprintf(s.out, "--- FAIL: %s (%s)\n%s", e.Test, e.Package, strings.Join(t.output, ""))
		}
		delete(s.running, key)
	case e.Action == "skip":
		reason := "no reason given"
		if t := s.running[key]; t != nil {
			reason = skipReason(t.output)
		}
		s.skipped = append(s.skipped, skip{e.Package, e.Test, reason})
		if s.progress {
			fmt.Fprintf(s.out, "--- SKIP: %s (%s): %s\n", e.Test, e.Package, reason)
		}
		delete(s.running, key)
	}
}

// packageEvent handles an event of a package rather than of a test.
func (s *summary) packageEvent(e event) {
	switch e.Action {
	case "output":
		s.pkgOutput[e.Package] = append(s.pkgOutput[e.Package], e.Output)
	case "pass":
		fmt.Fprintf(s.out, "ok  \t%s\t%.1fs\n", e.Package, e.Elapsed)
		delete(s.pkgOutput, e.Package)
	case "skip": // no test files
		delete(s.pkgOutput, e.Package)
	case "fail":
		s.failedPkgs = append(s.failedPkgs, e.Package)
		// Tests still running when their package failed (a panic, a
		// timeout) failed with it; their output says where.
		for key, t := range s.running {
			if pkg, name, _ := strings.Cut(key, " "); pkg == e.Package {
				s.failed++
				fmt.Fprintf(s.out, "--- FAIL: %s (%s, did not end)\n%s", name, pkg, strings.Join(t.output, ""))
				delete(s.running, key)
			}
		}
		var lines []string
		for _, l := range s.pkgOutput[e.Package] {
			if l != "PASS\n" && l != "FAIL\n" && !strings.HasPrefix(l, "ok  \t") && !strings.HasPrefix(l, "FAIL\t") {
				lines = append(lines, l)
			}
		}
		fmt.Fprintf(s.out, "FAIL\t%s\t%.1fs\n%s", e.Package, e.Elapsed, strings.Join(lines, ""))
		delete(s.pkgOutput, e.Package)
	}
}

// logLine is a line a test logged: "    file_test.go:12: message".
var logLine = regexp.MustCompile(`^\s+\S+\.go:\d+: (.*)$`)

// skipReason is the last message a skipped test logged (t.Skip's).
func skipReason(output []string) string {
	for _, l := range slices.Backward(output) {
		if m := logLine.FindStringSubmatch(strings.TrimRight(l, "\n")); m != nil {
			return m[1]
		}
	}
	return "no reason given"
}

// finish prints the skipped tests and the summary line, and reports
// whether the run passed.
func (s *summary) finish() bool {
	// Tests that never ended without their package failing: the input
	// was cut short.
	for key := range s.running {
		pkg, name, _ := strings.Cut(key, " ")
		s.failed++
		fmt.Fprintf(s.out, "--- FAIL: %s (%s, did not end: input cut short)\n", name, pkg)
	}
	slices.SortFunc(s.skipped, func(a, b skip) int {
		return strings.Compare(a.pkg+" "+a.test, b.pkg+" "+b.test)
	})
	var reasons []string
	count := map[string]int{}
	for _, k := range s.skipped {
		fmt.Fprintf(s.out, "skipped: %s %s: %s\n", k.pkg, k.test, k.reason)
		if count[k.reason] == 0 {
			reasons = append(reasons, k.reason)
		}
		count[k.reason]++
	}
	line := fmt.Sprintf("tests: %d passed, %d failed, %d skipped", s.passed, s.failed, len(s.skipped))
	if len(reasons) > 0 {
		var parts []string
		for _, r := range reasons {
			parts = append(parts, fmt.Sprintf("%d: %s", count[r], r))
		}
		line += " (" + strings.Join(parts, "; ") + ")"
	}
	if len(s.failedPkgs) > 0 {
		slices.Sort(s.failedPkgs)
		line += "; failed packages: " + strings.Join(slices.Compact(s.failedPkgs), ", ")
	}
	if s.events == 0 {
		line += "; no test ran"
	}
	fmt.Fprintln(s.out, line)
	return s.failed == 0 && len(s.failedPkgs) == 0 && s.events > 0
}
