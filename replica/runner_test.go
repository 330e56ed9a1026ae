package replica

import (
	"context"
	"fmt"
	"testing"
	"time"

	"cheops/catalog"
)

// TestDrainDoesNotWaitForAnEndlessBurst: a returning site's catalog fills
// up with a change every millisecond or so for as long as it syncs; the
// runner must start on what it has rather than wait for the burst to end
// (which, here, it never does).
func TestDrainDoesNotWaitForAnEndlessBurst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	feed := make(chan catalog.Change)
	go func() {
		for i := 0; ; i++ {
			select {
			case feed <- catalog.Change{ID: fmt.Sprintf("r%d", i)}:
			case <-ctx.Done():
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	ids, all, ok := drain(ctx, feed, catalog.Change{ID: "first"}, 5*time.Millisecond, 20*time.Millisecond)
	if !ok || all {
		t.Fatalf("drain: ok=%v all=%v", ok, all)
	}
	if !ids["first"] || len(ids) < 2 {
		t.Fatalf("drain collected %v, want the first change and those of the burst", ids)
	}
}

// TestDrainReportsAResync: a resync means look at everything.
func TestDrainReportsAResync(t *testing.T) {
	feed := make(chan catalog.Change, 1)
	feed <- catalog.Change{Kind: catalog.KindResync}
	_, all, ok := drain(context.Background(), feed, catalog.Change{ID: "a"}, time.Millisecond, time.Second)
	if !ok || !all {
		t.Fatalf("drain: ok=%v all=%v, want a resync", ok, all)
	}
}
