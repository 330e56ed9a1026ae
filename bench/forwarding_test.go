package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// needCommand skips the test when bin is missing and cannot be installed.
func needCommand(t *testing.T, bin string, pkgs ...string) {
	t.Helper()
	if _, err := ensureCommand(context.Background(), nil, bin, pkgs...); err != nil {
		t.Skipf("%v", err)
	}
}

func TestForwardingTinyProfile(t *testing.T) {
	needJSONServer(t)
	needCommand(t, "haproxy", "haproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tiny := forwardingProfile{gets: 40, creates: 8, rttGets: 10, rttCreates: 3,
		rtts: []time.Duration{0, 20 * time.Millisecond}, throughput: 300 * time.Millisecond, workers: 2}
	env := Env{Binary: binary(t), Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	res, err := runForwarding(ctx, env, tiny)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 2 {
		t.Fatalf("%d runs, want one per RTT (2)", len(res.Runs))
	}
	want := [][]string{{pathDirect, pathProxy, pathLocal, pathRemote}, {pathDirect, pathRemote}}
	for i, run := range res.Runs {
		var got []string
		for _, p := range run.Paths {
			got = append(got, p.Path)
			if p.Errors != 0 {
				t.Errorf("%s at %v ms: %d errors", p.Path, run.RTT, p.Errors)
			}
			for _, l := range []Latency{p.Get, p.Create} {
				if l.N == 0 || l.P50 <= 0 || l.P99 < l.P50 || l.Mean <= 0 {
					t.Errorf("%s at %v ms: latency %+v", p.Path, run.RTT, l)
				}
			}
			if p.GetRPS <= 0 {
				t.Errorf("%s at %v ms: %v req/s", p.Path, run.RTT, p.GetRPS)
			}
		}
		if strings.Join(got, ",") != strings.Join(want[i], ",") {
			t.Errorf("run %d paths %v, want %v", i, got, want[i])
		}
	}
	if res.Runs[1].RTT != 20 {
		t.Errorf("second run at %v ms, want 20", res.Runs[1].RTT)
	}
	// One WAN hop at 20 ms RTT costs at least the round trip.
	if r := res.Runs[1].Path(pathRemote); r.Get.P50 < 20 || r.Create.P50 < 20 {
		t.Errorf("remote at 20 ms RTT: GET p50 %v ms, create p50 %v ms: below the round trip", r.Get.P50, r.Create.P50)
	}
	if res.Ratio < 0 || res.RatioTarget != 1.2 || res.Proxy == "" {
		t.Errorf("target figures: %+v", res)
	}
	var table bytes.Buffer
	res.Table(&table)
	for _, s := range []string{"haproxy", "local agent", "remote agent", "target <= 1.2x"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
	plots, err := res.Plot(t.TempDir(), "forwarding")
	if err != nil || len(plots) != 2 {
		t.Fatalf("plots %v: %v", plots, err)
	}
	for _, p := range plots {
		if b, err := os.ReadFile(p); err != nil || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s is not an SVG (%v)", p, err)
		}
	}
	t.Logf("\n%s", table.String())
}
