package catalog

import (
	"fmt"
	"log/slog"
	"time"

	"cheops/scope"
)

// Config describes a catalog. Start from DefaultConfig; New fills the
// zero fields with their defaults.
type Config struct {
	// Store holds the keys (required): *crdt.Manager, or an in-memory
	// store in tests.
	Store Store
	// Self is this site's name (required).
	Self string
	// Clock stamps every value written; nil: a new hybrid logical clock
	// on time.Now with DefaultMaxClockAhead. The catalog moves it past
	// every timestamp it reads.
	Clock *Clock
	// Logger; nil: slog.Default().
	Logger *slog.Logger
	// WatchBuffer is how many changes a watcher may fall behind before
	// the catalog stops queueing for it and sends it KindResync instead.
	// 1024: one PutBatch of a re-homed resource with hundreds of
	// operations, or a heal delivering a few hundred entries, fits
	// without a resync; a watcher that does fall behind loses nothing,
	// it re-reads.
	WatchBuffer int
	// GatherDelay is how long the catalog waits, after it sees keys of a
	// resource outside the resource's current group, before it copies
	// them there (see Rehome). The keys of one batch arrive within
	// milliseconds of each other; waiting a second lets a re-homed
	// resource's batch land whole, so that only true stragglers are
	// copied, and costs nothing that matters (the copy only completes
	// the view of the sites that joined).
	GatherDelay time.Duration
	// AuditInterval is how often the catalog re-reads from the store the
	// keys of the resources that show operations still owed, and folds
	// in what its view missed (counted in AuditRepairs, logged). 2 s: an
	// owed operation is the symptom of a view that missed a change, and
	// re-reading a handful of resources costs nothing. A round waits
	// (at most 4 intervals) while the view is changing (auditNow): after
	// a heal hundreds of resources owe, and are being caught up. Negative:
	// never.
	AuditInterval time.Duration
}

// DefaultConfig returns a Config with every optional field at its
// default; Store and Self are left for the caller.
func DefaultConfig() Config {
	return Config{WatchBuffer: 1024, GatherDelay: time.Second, AuditInterval: 2 * time.Second}
}

// ValidSite reports whether s is a valid site name: the scope grammar's
// SITE token (scope.ValidName).
func ValidSite(s string) bool { return scope.ValidName(s) }

// Validate reports the first problem of the configuration.
func (c Config) Validate() error {
	switch {
	case c.Store == nil:
		return fmt.Errorf("%w: config: a store is required", ErrInvalid)
	case !ValidSite(c.Self):
		return fmt.Errorf("%w: config: site name %q", ErrInvalid, c.Self)
	case c.WatchBuffer <= 0:
		return fmt.Errorf("%w: config: WatchBuffer %d must be positive", ErrInvalid, c.WatchBuffer)
	case c.GatherDelay < 0:
		return fmt.Errorf("%w: config: GatherDelay %v is negative", ErrInvalid, c.GatherDelay)
	}
	return nil
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.WatchBuffer == 0 {
		c.WatchBuffer = d.WatchBuffer
	}
	if c.AuditInterval == 0 {
		c.AuditInterval = d.AuditInterval
	}
	if c.GatherDelay == 0 {
		c.GatherDelay = d.GatherDelay
	}
	if c.Clock == nil {
		c.Clock = NewClock(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
