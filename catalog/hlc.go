package catalog

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading: wall time in milliseconds
// and a counter that orders events within one millisecond or across
// clocks that drift. Two sites can read the same timestamp; Order breaks
// such ties by site name, so events of all sites are totally ordered.
type Timestamp struct {
	Wall    int64  `json:"wall"`
	Logical uint32 `json:"logical"`
}

// Compare orders timestamps: -1, 0 or +1.
func (t Timestamp) Compare(o Timestamp) int {
	if c := cmp.Compare(t.Wall, o.Wall); c != 0 {
		return c
	}
	return cmp.Compare(t.Logical, o.Logical)
}

func (t Timestamp) String() string {
	return fmt.Sprintf("%s+%d", time.UnixMilli(t.Wall).UTC().Format("2006-01-02T15:04:05.000Z"), t.Logical)
}

// IsZero reports whether the timestamp was never set.
func (t Timestamp) IsZero() bool { return t.Wall == 0 && t.Logical == 0 }

// Order is the total order of events across sites: by timestamp, then by
// the name of the site that stamped them.
func Order(a Timestamp, aSite string, b Timestamp, bSite string) int {
	if c := a.Compare(b); c != 0 {
		return c
	}
	return cmp.Compare(aSite, bSite)
}

// CompareOps is the order of operations, the only one: by HLC timestamp,
// then origin site (Order), then operation id. Every site orders a
// resource's operations with it: the catalog's view (Resource.Operations),
// a replica deciding what a late operation supersedes or replays
// (replica.Decide), catch-up running what a site owes.
func CompareOps(a, b Operation) int {
	if c := Order(a.At, a.Origin, b.At, b.Origin); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// DefaultMaxClockAhead is how far ahead of the local wall clock a remote
// timestamp may be for the clock to follow it. Sites kept by NTP differ
// by milliseconds, a badly set one by minutes; a timestamp an hour ahead
// is a broken clock or a hostile member, and following it would stamp
// every later operation of every site with that future time, for good
// (timestamps are stored and observed again at each start).
const DefaultMaxClockAhead = time.Hour

// ErrClockAhead is returned by Observe for a timestamp too far ahead.
var ErrClockAhead = errors.New("catalog: timestamp too far ahead of the local clock")

// Clock is a hybrid logical clock (Kulkarni et al., 2014). It never goes
// backwards, even when the wall clock does, and moves past every timestamp
// it observes, so an event stamped after another was seen orders after
// it. Safe for concurrent use.
type Clock struct {
	mu       sync.Mutex
	now      func() time.Time
	maxAhead time.Duration
	last     Timestamp
}

// NewClock returns a clock reading now (time.Now when nil) that follows
// remote timestamps up to DefaultMaxClockAhead ahead of now.
func NewClock(now func() time.Time) *Clock {
	return NewClockLimit(now, DefaultMaxClockAhead)
}

// NewClockLimit is NewClock with the limit on how far ahead of now an
// observed timestamp may be (0: no limit).
func NewClockLimit(now func() time.Time, maxAhead time.Duration) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{now: now, maxAhead: maxAhead}
}

// Now returns a timestamp greater than every one returned or observed.
func (c *Clock) Now() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := c.now().UnixMilli()
	switch {
	case wall > c.last.Wall:
		c.last = Timestamp{Wall: wall}
	case c.last.Logical == math.MaxUint32:
		// Four billion events in one millisecond: borrow the next one.
		c.last = Timestamp{Wall: c.last.Wall + 1}
	default:
		c.last.Logical++
	}
	return c.last
}

// Observe moves the clock past a timestamp received from another site.
// A timestamp more than the clock's limit ahead of the local wall clock
// is not followed: ErrClockAhead.
func (c *Clock) Observe(t Timestamp) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Compare(c.last) <= 0 {
		return nil
	}
	if c.maxAhead > 0 && t.Wall > c.now().Add(c.maxAhead).UnixMilli() {
		return fmt.Errorf("%w: %v", ErrClockAhead, t)
	}
	c.last = t
	return nil
}
