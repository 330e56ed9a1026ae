package bench

import (
	"bytes"
	"cheops/internal/testkit"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func TestAvailabilityTinyProfile(t *testing.T) {
	needJSONServer(t)
	needCommand(t, "etcd", "etcd-server")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Fast probes so that the isolated site finds the others down within
	// about a second; a write sent before that waits for the forwarder's
	// 10 s site timeout, so the cut lasts longer than both.
	tiny := availabilityProfile{rtt: 10 * time.Millisecond, before: 2 * time.Second, cut: 14 * time.Second,
		after: 2 * time.Second, rate: 4, timeout: 15 * time.Second,
		agentArgs: []string{"--probe-interval", "200ms", "--probe-timeout", "300ms"}}
	env := Env{Binary: testkit.BuildBinary(t), Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	res, err := runAvailability(ctx, env, tiny)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	res.Table(&table)
	t.Logf("\n%s", table.String())
	for _, s := range []SystemAvailability{res.Cheops, res.Etcd} {
		if s.Before.Issued < 5 || s.During.Issued < 20 || s.After.Issued < 5 {
			t.Errorf("%s: too few writes: %+v %+v %+v", s.System, s.Before, s.During, s.After)
		}
		// Before the cut both systems take every write.
		if s.Before.Accepted != s.Before.Issued {
			t.Errorf("%s accepted %d of %d writes before the cut", s.System, s.Before.Accepted, s.Before.Issued)
		}
		if s.LatencyBefore.P50 <= 0 || s.LatencyBefore.P99 < s.LatencyBefore.P50 {
			t.Errorf("%s: latency before the cut %+v", s.System, s.LatencyBefore)
		}
	}
	// The isolated site keeps taking cheops writes, the far part pending.
	if res.Cheops.During.Share != 1 || !res.Met {
		t.Errorf("cheops accepted %d of %d writes on the isolated site during the cut", res.Cheops.During.Accepted, res.Cheops.During.Issued)
	}
	if res.Cheops.FarPending == 0 {
		t.Error("no cheops write recorded its far site pending during the cut")
	}
	// A minority etcd member cannot commit.
	if res.Etcd.During.Share >= 1 {
		t.Errorf("etcd accepted %d of %d writes on the minority side", res.Etcd.During.Accepted, res.Etcd.During.Issued)
	}
	if res.EtcdLeader == "" || res.EtcdVersion == "" {
		t.Errorf("etcd leader %q, version %q", res.EtcdLeader, res.EtcdVersion)
	}
	if !strings.Contains(table.String(), "target 100%") {
		t.Errorf("table lacks the target:\n%s", table.String())
	}
	plots, err := res.Plot(t.TempDir(), "availability")
	if err != nil || len(plots) != 1 {
		t.Fatalf("plots %v: %v", plots, err)
	}
	if b, err := os.ReadFile(plots[0]); err != nil || !bytes.Contains(b, []byte("<svg")) {
		t.Errorf("%s is not an SVG (%v)", plots[0], err)
	}
}
