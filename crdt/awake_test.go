package crdt

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// More groups written at once, from every site, than a site may keep
// awake: every write returns, no site ever has more than MaxAwake
// replicas open, and every member ends with every write, within
// deadlines (a waiter holding what a sleeper needs would hang here).
func TestMoreGroupsThanAwakeSlots(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	const maxAwake, rounds = 3, 4
	n := newNet(t, names...)
	n.tune = func(c *Config) {
		c.MaxAwake = maxAwake
		c.IdleAfter = time.Hour // slots come free only by eviction
	}
	n.startAll(names...)

	// Every group of two or three sites: 20, 6 to 10 per site.
	var groups [][]string
	for mask := range 1 << len(names) {
		var sites []string
		for i, s := range names {
			if mask&(1<<i) != 0 {
				sites = append(sites, s)
			}
		}
		if len(sites) == 2 || len(sites) == 3 {
			groups = append(groups, sites)
		}
	}
	// Each member of each group writes its own keys into it, all at once.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(groups)*3)
	for _, sites := range groups {
		for _, writer := range sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rounds {
					key := fmt.Sprintf("/%s/%d", writer, i)
					if err := n.sites[writer].m.Put(ctx, sites, key, []byte(key)); err != nil {
						errs <- fmt.Errorf("%s: put %s in %v: %w", writer, key, sites, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every member holds every write", func() error {
		for _, sites := range groups {
			for _, member := range sites {
				for _, writer := range sites {
					key := fmt.Sprintf("/%s/%d", writer, rounds-1)
					if err := hasValue(n.sites[member], sites, key, key); err != nil {
						return fmt.Errorf("%v: %w", sites, err)
					}
				}
			}
		}
		return nil
	})
	var evictions, deferred float64
	for _, name := range names {
		s := n.sites[name]
		if peak := s.m.AwakePeak(); peak > maxAwake {
			t.Errorf("%s: %d replicas awake at once, bound %d", name, peak, maxAwake)
		}
		evictions += counterValue(s.m.metrics.evictions)
		deferred += counterValue(s.m.metrics.deferred)
	}
	if evictions == 0 {
		t.Error("no replica was put to sleep for a slot: the test did not reach the bound")
	}
	t.Logf("evictions %.0f, announcements deferred %.0f", evictions, deferred)
}
