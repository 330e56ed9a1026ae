package bench

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

// countStacks counts a stack once however many of its frames match, by
// the count at its head, and nothing of the stacks without a match.
func TestCountStacksByFrame(t *testing.T) {
	profile := []byte("goroutine profile: total 19\n" +
		"7 @ 0x1 0x2 0x3\n" +
		"#\t0x1\truntime.gopark+0xcd\t/go/src/runtime/proc.go:435\n" +
		"#\t0x2\tgithub.com/ipfs/go-ds-crdt.(*Datastore).rebroadcast+0x1\t/m/crdt.go:480\n" +
		"#\t0x3\tcheops/crdt.(*Group).open+0x2\t/src/crdt/group.go:400\n" +
		"\n" +
		"11 @ 0x1 0x4\n" +
		"#\t0x1\truntime.gopark+0xcd\t/go/src/runtime/proc.go:435\n" +
		"#\t0x4\tgithub.com/libp2p/go-yamux/v5.(*Session).sendLoop+0x494\t/m/session.go:635\n" +
		"\n" +
		"1 @ 0x5\n" +
		"# labels: {\"k\":\"v\"}\n" +
		"#\t0x5\tcheops/crdt.(*replica).repairRun+0x10\t/src/crdt/group.go:671\n")
	n, err := countStacks(profile, groupFrames)
	if err != nil || n != 8 {
		t.Fatalf("countStacks = %d, %v; want 8 (7 with two matching frames, 1 of a replica)", n, err)
	}
	if _, err := countStacks([]byte("goroutine profile: total 1\nnot a stack\n"), groupFrames); err == nil {
		t.Fatal("a line that is neither a stack's head nor a frame was accepted")
	}
}

// parkedForCount is where the live check's goroutines wait.
func parkedForCount(stop <-chan struct{}) { <-stop }

// goroutinesRunning reads the runtime's own goroutine profile: goroutines
// parked in a function are counted by its name, and stop counting once
// they return.
func TestCountStacksOfThisProcess(t *testing.T) {
	count := func() int {
		n, err := goroutinesRunning("cheops/bench.parkedForCount")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	stop := make(chan struct{})
	for range 3 {
		go parkedForCount(stop)
	}
	waitUntil(t, 10*time.Second, func() bool { return count() == 3 }, "3 goroutines parked in parkedForCount counted")
	close(stop)
	waitUntil(t, 10*time.Second, func() bool { return count() == 0 }, "none counted once they returned")
}

// waitUntil polls cond until it holds, failing t after within.
func waitUntil(t *testing.T, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// groupFrames name the goroutines of a group's replica: a write wakes
// the group at both members and go-ds-crdt's goroutines are counted; once
// both replicas sleep (scaleIdleAfter), none are.
func TestGroupGoroutinesCountAwakeReplicas(t *testing.T) {
	ctx := context.Background()
	names := []string{"s00", "s01"}
	ss, err := startScaleSites(ctx, t.TempDir(), names, time.Minute)
	defer ss.close(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := groupGoroutines(); err != nil || n != 0 {
		t.Fatalf("before any group: %d goroutines of groups (%v), want 0", n, err)
	}
	if _, ok := ss.probe(ctx, idleSpace, 0, names, 30*time.Second); !ok {
		t.Fatal("the write was not seen at both members within 30 s")
	}
	awake, err := groupGoroutines()
	if err != nil || ss.awake() == 0 || awake < ss.awake() {
		t.Fatalf("%d replicas awake, %d goroutines of groups (%v): want at least one each", ss.awake(), awake, err)
	}
	waitUntil(t, 3*scaleIdleAfter, func() bool {
		n, err := groupGoroutines()
		return err == nil && n == 0 && ss.awake() == 0
	}, "no goroutine of a group once both replicas sleep")
}
