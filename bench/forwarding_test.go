package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"cheops/internal/testkit"
)

// needCommand fails the test when bin is missing (testkit.Tool).
func needCommand(t *testing.T, bin string, pkgs ...string) {
	t.Helper()
	testkit.Tool(t, "apt-get install "+strings.Join(pkgs, " "), bin)
}

func TestForwardingTinyProfile(t *testing.T) {
	needJSONServer(t)
	needCommand(t, "haproxy", "haproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tiny := forwardingProfile{gets: 40, creates: 8, rttGets: 10, rttCreates: 3,
		rtts: []time.Duration{0, 20 * time.Millisecond}, throughput: 300 * time.Millisecond, workers: 2, clients: []int{1, 4}, bodyMiB: 4, createClients: 4}
	env := Env{Binary: testkit.BuildBinary(t), Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	res, err := runForwarding(ctx, env, tiny)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 2 {
		t.Fatalf("%d runs, want one per RTT (2)", len(res.Runs))
	}
	want := [][]string{{pathDirect, pathProxy, pathLocal, pathRemote, pathChain, pathGoProxy, pathGoServer, pathGoRaw}, {pathDirect, pathRemote}}
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
	// The emulation alone, measured through the same relays, costs at
	// least the round trip too.
	for _, run := range res.Runs {
		if run.Emulation.N == 0 || run.Emulation.P50 < run.RTT {
			t.Errorf("emulated round trip at %v ms: %+v", run.RTT, run.Emulation)
		}
	}
	if c := res.Runs[1].Clients; len(c) != 2 || c[0].Clients != 1 || c[1].Clients != 4 || c[1].Remote <= 0 || c[1].Direct <= 0 {
		t.Errorf("req/s by clients at 20 ms: %+v", c)
	}
	// Large bodies: a GET and a PUT through every path, each agent's
	// peak memory before and after.
	// Replicated creates, with the CPU each process spent per create.
	if res.ReplicatedCreates <= 0 || res.CreateErrors != 0 || len(res.CreateCPU) != 3 || res.CreateCPU["bench"] <= 0 || res.CreateCPU[res.AppSite] <= 0 || res.CreateCPU[res.Remote] <= 0 {
		t.Errorf("replicated creates: %v/s, %d errors, CPU µs per create %v", res.ReplicatedCreates, res.CreateErrors, res.CreateCPU)
	}
	if len(res.Bodies) != 4 || len(res.RSSAfter) != 2 || len(res.RSSBefore) != 2 {
		t.Errorf("large bodies: %+v, peak RSS %v -> %v", res.Bodies, res.RSSBefore, res.RSSAfter)
	}
	for _, b := range res.Bodies {
		if b.GetMBps <= 0 || b.PutMBps <= 0 {
			t.Errorf("large bodies through %s: %+v", b.Path, b)
		}
	}
	// What the links alone carry: plain TCP and a libp2p stream through
	// the same relays.
	if res.LinkMBps <= 0 || res.P2PMBps <= 0 {
		t.Errorf("links alone: TCP %v MiB/s, libp2p %v MiB/s", res.LinkMBps, res.P2PMBps)
	}
	// Every target is judged, each once: 2 local, req/s at 0 ms, 4 for
	// large bodies and 2 for the agents' memory, replicated creates, one
	// added latency per RTT, growth from 1 to 4 clients.
	if len(res.Targets) != 13 {
		t.Errorf("%d targets, want 13: %+v", len(res.Targets), res.Targets)
	}
	if missed := res.Missed(); len(missed) != countMissed(res.Targets) {
		t.Errorf("Missed() lists %d, %d targets missed", len(missed), countMissed(res.Targets))
	}
	var table bytes.Buffer
	res.Table(&table)
	for _, s := range []string{"haproxy", "local agent", "remote agent", "target <= 1.2x", "emulated round trip", "a libp2p stream alone", "targets:"} {
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

func TestForwardingThroughGivenAgents(t *testing.T) {
	needJSONServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, ClusterOptions{Binary: testkit.BuildBinary(t), Sites: []string{"lyon", "turin"}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	tiny := forwardingProfile{gets: 20, creates: 5, throughput: 200 * time.Millisecond, workers: 2}
	res, err := runForwarding(ctx, Env{Agents: []string{c.Site("lyon").API, c.Site("turin").API}}, tiny)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "agents" || res.AppSite != "lyon" || res.Remote != "turin" || len(res.Runs) != 1 {
		t.Fatalf("result %+v", res)
	}
	run := res.Runs[0]
	if len(run.Paths) != 2 || run.Paths[0].Path != pathLocal || run.Paths[1].Path != pathRemote {
		t.Fatalf("paths %+v", run.Paths)
	}
	for _, p := range run.Paths {
		if p.Errors != 0 || p.Get.N != 20 || p.Create.N != 5 || p.Get.P50 <= 0 || p.Get.P99 < p.Get.P50 || p.GetRPS <= 0 {
			t.Errorf("%s: %+v", p.Path, p)
		}
	}
	// Every create went to lyon's application, none to turin's.
	for site, want := range map[string]int{"lyon": 1 + 2*5, "turin": 0} {
		var posts []map[string]any
		if err := c.getJSON(ctx, c.Site(site).App+"/posts", &posts); err != nil || len(posts) != want {
			t.Errorf("%s's json-server holds %d posts (%v), want %d", site, len(posts), err, want)
		}
	}
	var table bytes.Buffer
	res.Table(&table)
	if !strings.Contains(table.String(), "not measured on a running deployment") {
		t.Errorf("table:\n%s", table.String())
	}
}

func countMissed(ts []Target) int {
	n := 0
	for _, t := range ts {
		if !t.Met {
			n++
		}
	}
	return n
}
