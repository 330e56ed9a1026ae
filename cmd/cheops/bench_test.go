package main

import (
	"io"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"cheops/bench"
)

// fakeReport is a scenario's report with the targets it missed.
type fakeReport struct{ missed []string }

func (r fakeReport) Table(w io.Writer) {
	io.WriteString(w, "fake: target: "+bench.Verdict(len(r.missed) == 0)+"\n")
}
func (r fakeReport) Plot(string, string) ([]string, error) { return nil, nil }
func (r fakeReport) Missed() []string                      { return r.missed }

// A missed target fails the run under --strict only; the table says it
// either way.
func TestBenchStrict(t *testing.T) {
	for name, missed := range map[string][]string{"fake-met": nil, "fake-missed": {"ratio 0.26 > 0.25"}} {
		scenarios[name] = func(*cli.Context, bench.Env) (bench.Report, error) { return fakeReport{missed}, nil }
		t.Cleanup(func() { delete(scenarios, name) })
	}
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"bench", "fake-met"}, exitOK, "target: met"},
		{[]string{"bench", "--strict", "fake-met"}, exitOK, "target: met"},
		{[]string{"bench", "fake-missed"}, exitOK, "target: MISSED"},
		{[]string{"bench", "--strict", "fake-missed"}, exitFailed, "target: MISSED"},
	} {
		out, msg, code := runErr(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("%v: exit %d (%s), output %q; want exit %d and %q", tc.args, code, msg, out, tc.code, tc.out)
		}
		if code == exitFailed && !strings.Contains(msg, "ratio 0.26 > 0.25") {
			t.Errorf("%v: message %q does not name the missed target", tc.args, msg)
		}
	}
}
