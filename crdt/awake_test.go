package crdt

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	groups := siteSets(names, func(sites []string) bool { return len(sites) == 2 || len(sites) == 3 })
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
	// The links' readers take only free slots: announcements for
	// sleeping groups went through the waker.
	if deferred == 0 {
		t.Error("no announcement was deferred to the waker")
	}
	t.Logf("evictions %.0f, announcements deferred %.0f", evictions, deferred)
}

// aloneSite starts site a of a three-site net whose other members never
// run, with one slot: what wakes or sleeps a's groups is the test alone
// (no member connects, kicking repairs; nothing idles out).
func aloneSite(t *testing.T) (*site, *Group, *Group) {
	t.Helper()
	n := newNet(t, "a", "b", "c")
	n.tune = func(c *Config) {
		c.MaxAwake = 1
		c.IdleAfter = time.Hour
		c.RepairInterval = time.Hour
	}
	a := n.start("a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, sites := range [][]string{{"a", "c"}, {"a", "b"}} {
		if err := a.m.Put(ctx, sites, "/k", []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	ab, ac := a.m.group("a,b"), a.m.group("a,c")
	if ab.awake() == nil || ac.awake() != nil {
		t.Fatalf("a,b awake %v, a,c awake %v: want a,b only (one slot)", ab.awake() != nil, ac.awake() != nil)
	}
	return a, ab, ac
}

// Waking a group for its repair (wakeDirty) must not put another group
// in need of repair to sleep: with slots scarce, repairs put each other
// to sleep in turn and none finished.
func TestWakeDirtyLeavesDirtyReplicasAwake(t *testing.T) {
	a, ab, ac := aloneSite(t)
	ctx := context.Background()
	ab.awake().store.MarkDirty(ctx) // a repair due, not started
	ac.sleptDirty.Store(true)
	ac.wakeDirty()
	if ab.awake() == nil {
		t.Fatal("waking a,c for its repair put dirty a,b to sleep")
	}
	if ac.awake() != nil || !ac.sleptDirty.Load() {
		t.Fatal("a,c woke without a free slot or a clean replica to evict")
	}
	if got := a.m.AwakePeak(); got > 1 {
		t.Fatalf("%d replicas awake at once, bound 1", got)
	}
}

// A replica put to sleep dirty, or in the middle of a repair, to free a
// slot for a write is repaired when it wakes.
func TestEvictedRepairRunsOnWake(t *testing.T) {
	a, ab, _ := aloneSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dirty := range []bool{true, false} {
		r := ab.awake()
		if dirty {
			r.store.MarkDirty(ctx)
		} else {
			// In the middle of a (forced) repair of a clean replica: the
			// flag is set by hand, as repairRun holds it.
			r.repairing.Store(true)
		}
		repairs := counterValue(a.m.metrics.repairs)
		if err := a.m.Put(ctx, []string{"a", "c"}, "/k2", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if ab.awake() != nil || !ab.sleptDirty.Load() {
			t.Fatalf("dirty=%v: a,b awake %v, sleptDirty %v: want asleep with its repair due", dirty, ab.awake() != nil, ab.sleptDirty.Load())
		}
		if _, ok, err := a.m.Get(ctx, []string{"a", "b"}, "/k"); err != nil || !ok {
			t.Fatalf("read a,b: %v %v", ok, err)
		}
		eventually(t, 10*time.Second, "a,b repaired on wake", func() error {
			if got := counterValue(a.m.metrics.repairs); got <= repairs {
				return fmt.Errorf("%.0f repairs", got)
			}
			if ab.dirty(ctx) {
				return fmt.Errorf("still dirty")
			}
			if r := ab.awake(); r == nil || r.repairing.Load() {
				return fmt.Errorf("asleep, or the repair still runs")
			}
			return nil
		})
	}
}

// A write whose caller gives up while its group waits for a slot
// returns at once, and is not applied: an error means not applied. The
// commit used to take the write off the queue and then wait for the
// slot with the manager's context: the writer could not give up, or,
// behind another commit, got ctx.Err() and its write was applied later.
func TestCancelledWriteWaitingForSlotIsNotApplied(t *testing.T) {
	a, ab, _ := aloneSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, done, _, err := ab.use(ctx) // a,b holds the only slot, at work
	if err != nil {
		t.Fatal(err)
	}
	ac := []string{"a", "c"}
	wctx, wcancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- a.m.Put(wctx, ac, "/gave-up", []byte("v")) }()
	g := a.m.group("a,c")
	eventually(t, 5*time.Second, "the write waits for a slot", func() error {
		g.commits.mu.Lock()
		defer g.commits.mu.Unlock()
		if !g.commits.running {
			return fmt.Errorf("no commit running")
		}
		return nil
	})
	wcancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			done()
			t.Fatalf("write: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		done()
		t.Fatal("a write waiting for a slot did not return when its caller gave up")
	}
	done()
	// Commits run in order: once a later write is applied, an earlier
	// one that was going to be is too.
	if err := a.m.Put(ctx, ac, "/later", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := a.m.Get(ctx, ac, "/gave-up"); err != nil || ok {
		t.Fatalf("the write whose caller gave up: applied %v (%v)", ok, err)
	}
}

// After an unclean stop, a site with more groups than MaxAwake repairs
// them all without ever having more than MaxAwake replicas open: they
// used to be opened at once at startup, past the bound (thousands of
// groups, tens of thousands of replicas).
func TestUncleanRestartKeepsTheAwakeBound(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	const maxAwake = 2
	n := newNet(t, names...)
	n.tune = func(c *Config) {
		c.MaxAwake = maxAwake
		c.IdleAfter = 50 * time.Millisecond
		// A repair put to sleep for a write's or a merge's slot waits
		// for the periodic check (wakeDirty).
		c.RepairInterval = 200 * time.Millisecond
	}
	n.startAll(names...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Every group a is in: 7, each with a write.
	var groups [][]string
	for mask := 1; mask < 8; mask++ {
		sites := []string{"a"}
		for i, s := range names[1:] {
			if mask&(1<<i) != 0 {
				sites = append(sites, s)
			}
		}
		groups = append(groups, sites)
		if err := n.sites["a"].m.Put(ctx, sites, "/k", []byte(fmt.Sprint(sites))); err != nil {
			t.Fatal(err)
		}
	}
	n.stop("a", false)
	a := n.start("a")
	if !a.m.Unclean() {
		t.Fatal("the restart was not unclean")
	}
	eventually(t, 20*time.Second, "every group repaired", func() error {
		for _, sites := range groups {
			g := a.m.group(strings.Join(sites, ","))
			if g.sleptDirty.Load() || g.dirty(ctx) {
				return fmt.Errorf("%s not repaired", g.name)
			}
		}
		return nil
	})
	if peak := a.m.AwakePeak(); peak > maxAwake {
		t.Fatalf("%d replicas awake at once after the restart, bound %d", peak, maxAwake)
	}
	for _, sites := range groups {
		if err := hasValue(a, sites, "/k", fmt.Sprint(sites)); err != nil {
			t.Fatal(err)
		}
	}
}

// A link's reader takes only a free slot: an announcement for a sleeping
// group while every slot is held (here by a clean idle replica) is
// deferred to the waker, which may evict; the reader neither reads nor
// closes another group's replica.
func TestLinkReaderOnlyTakesFreeSlots(t *testing.T) {
	a, ab, ac := aloneSite(t)
	ctx := context.Background()
	if err := a.m.Put(ctx, []string{"a", "b"}, "/ab-only", []byte("v")); err != nil {
		t.Fatal(err)
	}
	heads, err := ab.encodedHeads(ctx) // not merged in a,c
	if err != nil || heads == nil {
		t.Fatalf("a,b's heads: %v %v", heads, err)
	}
	if ok, err := ac.deliver(ctx, heads, 0, false, wakeAnnouncement); !ok || err != nil {
		t.Fatalf("deliver: %v %v", ok, err)
	}
	if got := counterValue(a.m.metrics.deferred); got != 1 {
		t.Fatalf("%.0f announcements deferred, want 1", got)
	}
}
