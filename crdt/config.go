package crdt

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// Config describes a site's replication manager.
type Config struct {
	// Host is the site's libp2p host: the block and heads protocols are
	// registered on it and its connections trigger catch-up.
	Host host.Host
	// Datastore is the site's persistent store; every group lives in its
	// own namespace of it. The caller opens it (OpenStore) and closes it
	// after Close.
	Datastore ds.Batching
	// Self is this site's name.
	Self string
	// Resolve maps a site to its peer id (membership).
	Resolve func(site string) (peer.ID, bool)

	// RebroadcastInterval is how often a group re-announces heads that no
	// member announced meanwhile. Catch-up does not wait for it (heads are
	// pushed when a member connects and fresh heads travel with their
	// blocks), so it only repairs a message lost on a live connection:
	// 10 s bounds that repair at the cost of one small message per group
	// and interval (go-ds-crdt's default of 1 min made a healed partition
	// wait up to 2 min: docs/architecture.md, "What the libraries do").
	RebroadcastInterval time.Duration
	// PushDelays are the delays after a member connects at which this
	// site pushes the shared groups' heads to it: at once (a healed
	// member serves the link already, and this push is the first thing
	// its catch-up waits for: 50 ms here delayed every group of a heal by
	// as much, one sixth of the catalog's bound after reconnecting on a
	// LAN; a member whose handlers are not up yet gets the next one), at
	// 250 ms (a restarting
	// member's host connects before its manager serves the heads
	// protocol: without this push it waited for the one at 1 s — 100 owed
	// operations seen 1.05 s after the restart, 0.30 s with it), then
	// twice more, because what is sent in the first second of a
	// connection can be lost.
	PushDelays []time.Duration
	// MaxPushBlocks bounds how many blocks the block server sends in one
	// answer (the wanted ones and their ancestors). 8192 blocks of a few
	// hundred bytes make one answer of a few MiB: a long absence catches
	// up in a few round trips, and the asker's reports of blocks it holds
	// stop the server early when it reaches known history.
	MaxPushBlocks int
	// MaxPushBytes bounds the block bytes of one answer (64 MiB).
	MaxPushBytes int
	// CommitLinger is how long a commit into a group waits, at most, for
	// the writes announced to be on their way into it (Manager.Expect)
	// before it starts without them: concurrent writers then share one
	// delta (one DAG node to build, store, announce, and merge at every
	// member) instead of one each. A write nobody else announced commits
	// at once. 2 ms: under load (32 clients creating on 2 sites) a create
	// takes tens of milliseconds anyway, and deltas per create fell from
	// about 0.7 to about 0.15; it stays small beside a WAN round trip.
	// 0: never wait.
	CommitLinger time.Duration
	// MaxInlineBytes bounds the block bytes carried in one broadcast with
	// the heads (fresh deltas reach members without a fetch round trip).
	// 256 KiB keeps one announcement from holding a link for long; a
	// bigger delta is fetched instead.
	MaxInlineBytes int
	// FetchTimeout bounds one block exchange with one member, and a heads
	// push. 20 s leaves room for a few MiB on a slow WAN link.
	FetchTimeout time.Duration
	// Workers is the number of DAG walkers per group (go-ds-crdt's
	// NumWorkers). 2: a site's groups merge in parallel with each other
	// (a site holds many), block fetches wait in go-ds-crdt's own
	// goroutines, not in a walker, and every walker is a goroutine of each
	// awake replica (go-ds-crdt adds 4 of its own): the goroutines of the
	// replicas awake at once stay allocated as the process's high-water
	// mark, which 4 walkers made most of an idle group's heap. Two, not
	// one: a group all sites share merges the two sides of a heal at once
	// (one group of 20 sites × 2,000 writes converged in 5–11 s with 2
	// walkers, 11–19 s with 1, at load 1–6).
	Workers int
	// RepairInterval is how often a group whose replica is marked dirty
	// (a walk failed, or the previous run did not stop cleanly) retries
	// its DAG repair. A connecting member triggers a retry at once too.
	// 30 s: a repair walks the whole DAG, so not in a tight loop.
	RepairInterval time.Duration
	// DigestInterval is how often this site compares, with each connected
	// member, the heads of every group they share (one stream per peer,
	// whatever the number of groups); groups that differ have their heads
	// pushed both ways. 5 s bounds how long a lost heads message can leave
	// a group diverged, for a few hundred bytes per peer per round.
	DigestInterval time.Duration
	// SettleAfter is how long after this site's last write into a group,
	// or its last reading of a member's announcement of one, a periodic
	// anti-entropy round waits before it compares the group: within it,
	// announcements may still be on the links, and comparing finds a
	// difference they are about to remove, pushes heads both ways and
	// may wake the group at both ends. Such a group is left out of the
	// round (deferred) and compared at a later one. Only writes and
	// announcements start the settle time again: a repair's changes
	// (heads pushed, blocks fetched) and reads do not. A deferral never
	// holds back a known repair: a group the last round with that member
	// found different, one of which a message to or from it was dropped
	// (at either end), one changed before the connection to it opened,
	// and every group in the round of a connection event are compared at
	// once; a group written without pause is compared at least every
	// settleLimit × SettleAfter. What it can delay is the repair of a
	// loss no site noticed, by at most one DigestInterval (the round
	// that fell within the settle time is followed by the next). Never
	// more than DigestInterval is used; 0 compares every group at every
	// round.
	//
	// 0 (off) by default: measured on 2026-12-04 (docs/scaling.md, "The
	// settle rule made safe"), 2 s took 2–30 % less CPU per write, but
	// one group of all 10 or 20 sites converged 4–5.3 s after its last
	// write in 4 of 16 runs (off: at most 2.3 s in 15), and 0.5 s saved
	// nothing at 100 sites × 20,000 resources.
	SettleAfter time.Duration
	// IdleAfter puts a group to sleep once it has been idle that long: its
	// go-ds-crdt replica (workers, timers, caches) is closed, and opened
	// again by the next read, write, announcement or repair. A site in
	// thousands of groups then pays, in memory and periodic work, for the
	// ones in use. 0 keeps every group awake.
	IdleAfter time.Duration
	// MaxAwake bounds the groups whose replica is open at once (each
	// keeps 7 goroutines and ~12 KiB while awake). Waking one more puts
	// the least recently used idle replica to sleep first; when every
	// open replica is at work, a read or write waits for one to finish,
	// and an announcement's heads wait in memory (awake.go). Without a
	// bound, 100 in-process sites × 50,000 writes had ~30,000 replicas
	// awake and 243,000 goroutines, and the process drowned. 32: a site
	// commits and merges a few groups at a time on a few cores; at 100
	// sites × 20,000 writes (one process, 2 cores) bounds of 128, 32 and
	// 8 (two slots a few minutes apart) gave 1,877, 2,026 and 2,103
	// writes/s and 1,070, 1,060 and 1,121 CPU µs per write (noise), with
	// ~11,000, ~3,000 and 800 replicas awake in the process and 190,000,
	// 125,000 and 127,000 goroutines at most (the rest are the
	// connections').
	MaxAwake int

	// Registerer receives the package's metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Logger receives the package's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns timings that converge within a second on a LAN
// and a few round trips on a WAN.
func DefaultConfig() Config {
	return Config{
		RebroadcastInterval: 10 * time.Second,
		PushDelays:          []time.Duration{0, 250 * time.Millisecond, 1 * time.Second, 3 * time.Second},
		MaxPushBlocks:       8192,
		MaxPushBytes:        64 << 20,
		MaxInlineBytes:      256 << 10,
		CommitLinger:        2 * time.Millisecond,
		FetchTimeout:        20 * time.Second,
		Workers:             2,
		RepairInterval:      30 * time.Second,
		DigestInterval:      5 * time.Second,
		SettleAfter:         0, // see the field: it delays repairs of losses nobody noticed
		IdleAfter:           30 * time.Second,
		MaxAwake:            32,
	}
}

// Errors of the package; every error returned wraps one of them or an
// error of the datastore.
var (
	// ErrBadConfig is wrapped by Validate's errors.
	ErrBadConfig = errors.New("crdt: bad configuration")
	// ErrBadGroup: the site set is empty or a site name is malformed.
	ErrBadGroup = errors.New("crdt: bad group")
	// ErrUnknownSite: membership knows no peer for a site of the group.
	ErrUnknownSite = errors.New("crdt: unknown site")
	// ErrNotMember: this site (or the asking peer) is not in the group.
	ErrNotMember = errors.New("crdt: not a member of the group")
	// ErrBadInput: a malformed call (empty key, keys and values of
	// different lengths).
	ErrBadInput = errors.New("crdt: bad input")
	// ErrClosed: the manager is closed.
	ErrClosed = errors.New("crdt: manager closed")
)

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch {
	case c.Host == nil || c.Datastore == nil:
		return fmt.Errorf("%w: host and datastore are required", ErrBadConfig)
	case c.Self == "":
		return fmt.Errorf("%w: the site name is required", ErrBadConfig)
	case c.Resolve == nil:
		return fmt.Errorf("%w: a site resolver is required", ErrBadConfig)
	case c.RebroadcastInterval <= 0 || c.FetchTimeout <= 0 || c.RepairInterval <= 0 || c.DigestInterval <= 0:
		return fmt.Errorf("%w: rebroadcast interval, fetch timeout, repair and digest intervals must be positive", ErrBadConfig)
	case c.MaxPushBlocks < 1 || c.MaxPushBytes < maxBlock || c.Workers < 1 || c.MaxAwake < 1:
		return fmt.Errorf("%w: max push blocks, workers and max awake must be at least 1, max push bytes at least %d", ErrBadConfig, maxBlock)
	case c.MaxInlineBytes < 0 || c.IdleAfter < 0 || c.CommitLinger < 0 || c.SettleAfter < 0:
		return fmt.Errorf("%w: max inline bytes, idle time, commit linger and settle time must not be negative", ErrBadConfig)
	}
	for _, d := range c.PushDelays {
		if d < 0 {
			return fmt.Errorf("%w: negative push delay %v", ErrBadConfig, d)
		}
	}
	return nil
}
