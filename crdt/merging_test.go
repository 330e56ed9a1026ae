package crdt

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cheops/internal/testkit"
)

// Merging reports a fetch that started or stored blocks within
// mergeQuiet (the walk merges what came, then fetches the next blocks),
// not one that hangs.
func TestMergingWhileFetching(t *testing.T) {
	m := &Manager{}
	m.metrics = newMetrics(prometheus.NewRegistry(), m)
	if m.Merging() {
		t.Fatal("merging before any fetch")
	}
	m.fetchActive()
	if !m.Merging() {
		t.Fatal("not merging as a fetch starts")
	}
	testkit.Eventually(t, 5*time.Second, "the merge over", func() error {
		if m.Merging() {
			return errors.New("still merging")
		}
		return nil
	})
}
