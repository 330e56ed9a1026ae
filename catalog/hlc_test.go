package catalog

import (
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestNewIDSortableAndUnique(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 2000 {
		id := NewID(base.Add(time.Duration(i) * time.Millisecond))
		if !ValidID(id) {
			t.Fatalf("invalid id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		if id <= prev {
			t.Fatalf("%q sorts before %q", id, prev)
		}
		prev = id
	}
	for _, bad := range []string{"", "01ARZ3NDEKTSV4RRFFQ69G5FA", "01ARZ3NDEKTSV4RRFFQ69G5FAVU", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "../etc/passwd"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q)", bad)
		}
	}
}

func TestClockMonotonicAndObserves(t *testing.T) {
	wall := time.UnixMilli(1000)
	c := NewClock(func() time.Time { return wall })
	a := c.Now()
	b := c.Now()
	if b.Compare(a) <= 0 {
		t.Fatalf("%v not after %v", b, a)
	}
	wall = time.UnixMilli(500) // the wall clock goes back
	if d := c.Now(); d.Compare(b) <= 0 {
		t.Fatalf("clock went back: %v after %v", d, b)
	}
	c.Observe(Timestamp{Wall: 9000, Logical: 7})
	if e := c.Now(); e.Compare(Timestamp{Wall: 9000, Logical: 7}) <= 0 {
		t.Fatalf("clock did not move past an observed timestamp: %v", e)
	}
}

// Ids drawn at once by many sites in the same millisecond never collide,
// and ids of a later millisecond sort after all of them, whoever drew them.
func TestIDsUniqueAndSortableAcrossSites(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const sites, each = 8, 5000
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range sites {
		wg.Go(func() {
			var site idSource // each site its own process
			ids := make([]string, each)
			for i := range ids {
				ids[i] = site.next(at)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if seen[id] {
					t.Errorf("duplicate id %s", id)
				}
				seen[id] = true
			}
		})
	}
	wg.Wait()
	var later idSource
	next := later.next(at.Add(time.Millisecond))
	for id := range seen {
		if id >= next || !ValidID(id) {
			t.Fatalf("%s (1 ms later, another site) does not sort after %s", next, id)
		}
	}
}

// Within a process ids strictly increase, even within a millisecond and
// when the clock goes back.
func TestIDsMonotonicWithinAProcess(t *testing.T) {
	var g idSource
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	prev := g.next(at)
	for i := range 1000 {
		when := at
		if i%3 == 0 {
			when = at.Add(-time.Second) // the clock went back
		}
		id := g.next(when)
		if id <= prev {
			t.Fatalf("%s after %s", id, prev)
		}
		prev = id
	}
	if id := g.next(at.Add(time.Hour)); id <= prev || id[:9] == prev[:9] {
		t.Fatalf("a later millisecond: %s after %s", id, prev)
	}
}

func TestOrderBreaksTiesBySite(t *testing.T) {
	ts := Timestamp{Wall: 1000, Logical: 2}
	cases := []struct {
		a      Timestamp
		aSite  string
		b      Timestamp
		bSite  string
		expect int
	}{
		{ts, "berlin", ts, "paris", -1},
		{ts, "paris", ts, "berlin", 1},
		{ts, "paris", ts, "paris", 0},
		{Timestamp{Wall: 1000, Logical: 3}, "berlin", ts, "paris", 1},
		{Timestamp{Wall: 999, Logical: 9}, "rome", ts, "berlin", -1},
	}
	for _, c := range cases {
		if got := Order(c.a, c.aSite, c.b, c.bSite); got != c.expect {
			t.Errorf("Order(%v %s, %v %s) = %d, want %d", c.a, c.aSite, c.b, c.bSite, got, c.expect)
		}
	}
	// Two sites whose clocks read the same millisecond order their events
	// the same way on both sides.
	wall := func() time.Time { return time.UnixMilli(5000) }
	paris, berlin := NewClock(wall), NewClock(wall)
	p, b := paris.Now(), berlin.Now()
	if p != b || Order(p, "paris", b, "berlin") <= 0 || Order(b, "berlin", p, "paris") >= 0 {
		t.Fatalf("tie not broken by site: %v %v", p, b)
	}
	// After berlin hears of paris' event, its next one orders after it.
	if err := berlin.Observe(p); err != nil {
		t.Fatal(err)
	}
	if next := berlin.Now(); Order(next, "berlin", p, "paris") <= 0 {
		t.Fatalf("berlin's event after observing paris' orders before it: %v vs %v", next, p)
	}
}

func TestClockDoesNotFollowTheFarFuture(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	c := NewClockLimit(func() time.Time { return now }, time.Minute)
	near := Timestamp{Wall: now.Add(30 * time.Second).UnixMilli(), Logical: 4}
	if err := c.Observe(near); err != nil {
		t.Fatalf("30 s ahead refused: %v", err)
	}
	if got := c.Now(); got.Compare(near) <= 0 {
		t.Fatalf("did not follow a timestamp 30 s ahead: %v", got)
	}
	far := Timestamp{Wall: now.Add(2 * time.Hour).UnixMilli()}
	if err := c.Observe(far); !errors.Is(err, ErrClockAhead) {
		t.Fatalf("2 h ahead: %v, want ErrClockAhead", err)
	}
	if got := c.Now(); got.Compare(far) >= 0 {
		t.Fatalf("followed a timestamp 2 h ahead: %v", got)
	}
	if err := c.Observe(Timestamp{Wall: math.MaxInt64}); !errors.Is(err, ErrClockAhead) {
		t.Fatalf("MaxInt64: %v", err)
	}
	// Without a limit the clock follows anything.
	free := NewClockLimit(func() time.Time { return now }, 0)
	if err := free.Observe(far); err != nil || free.Now().Compare(far) <= 0 {
		t.Fatalf("unlimited clock: %v", err)
	}
}

func TestClockLogicalOverflow(t *testing.T) {
	now := time.UnixMilli(7000)
	c := NewClock(func() time.Time { return now })
	top := Timestamp{Wall: 7000, Logical: math.MaxUint32}
	if err := c.Observe(top); err != nil {
		t.Fatal(err)
	}
	next := c.Now()
	if next.Compare(top) <= 0 {
		t.Fatalf("%v does not follow %v", next, top)
	}
	if next != (Timestamp{Wall: 7001}) {
		t.Fatalf("overflow: %v", next)
	}
}

// Many goroutines reading one clock never get the same timestamp twice.
func TestClockConcurrentReadsUnique(t *testing.T) {
	c := NewClock(func() time.Time { return time.UnixMilli(42) })
	var mu sync.Mutex
	var all []Timestamp
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				ts := c.Now()
				mu.Lock()
				all = append(all, ts)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(all, Timestamp.Compare)
	if len(slices.CompactFunc(all, func(a, b Timestamp) bool { return a == b })) != 8000 {
		t.Fatal("duplicate timestamps")
	}
}

// TestCompareOps: timestamp first, then origin site, then operation id;
// equal operations compare 0.
func TestCompareOps(t *testing.T) {
	ts := Timestamp{Wall: 1000, Logical: 2}
	later := Timestamp{Wall: 1000, Logical: 3}
	for _, c := range []struct {
		a, b Operation
		want int
	}{
		{Operation{ID: "b", At: ts, Origin: "paris"}, Operation{ID: "a", At: later, Origin: "berlin"}, -1},
		{Operation{ID: "b", At: ts, Origin: "berlin"}, Operation{ID: "a", At: ts, Origin: "paris"}, -1},
		{Operation{ID: "a", At: ts, Origin: "paris"}, Operation{ID: "b", At: ts, Origin: "paris"}, -1},
		{Operation{ID: "a", At: ts, Origin: "paris"}, Operation{ID: "a", At: ts, Origin: "paris"}, 0},
	} {
		if got := CompareOps(c.a, c.b); got != c.want {
			t.Errorf("CompareOps(%+v, %+v) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := CompareOps(c.b, c.a); got != -c.want {
			t.Errorf("CompareOps(%+v, %+v) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}
