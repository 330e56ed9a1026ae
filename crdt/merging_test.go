package crdt

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cheops/internal/testkit"
)

// Merging reports a fetch in progress, and for mergeQuiet after the last
// one ended (the walk merges what came, then fetches the next blocks).
func TestMergingWhileFetching(t *testing.T) {
	m := &Manager{}
	m.metrics = newMetrics(prometheus.NewRegistry(), m)
	if m.Merging() {
		t.Fatal("merging before any fetch")
	}
	done := m.fetching()
	if !m.Merging() {
		t.Fatal("not merging while a fetch runs")
	}
	done()
	if !m.Merging() {
		t.Fatal("not merging right after a fetch ended")
	}
	testkit.Eventually(t, 5*time.Second, "the merge over", func() error {
		if m.Merging() {
			return errors.New("still merging")
		}
		return nil
	})
}
