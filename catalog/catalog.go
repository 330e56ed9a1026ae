package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Store is the replicated key-value store the catalog is kept in: one
// group of keys per site set, replicated among exactly those sites.
// *crdt.Manager implements it; its method set is copied here with basic
// types only, so that no adapter is needed.
type Store interface {
	// Put writes key in the group of sites, joining the group if needed.
	// It fails when this site is not one of sites.
	Put(ctx context.Context, sites []string, key string, value []byte) error
	// PutBatch writes several keys in the group of sites as one delta:
	// the other members receive them together.
	PutBatch(ctx context.Context, sites []string, keys []string, values [][]byte) error
	// Get reads key from the group of sites; false when absent or when
	// this site is not in the group.
	Get(ctx context.Context, sites []string, key string) ([]byte, bool, error)
	// Delete removes key from the group of sites.
	Delete(ctx context.Context, sites []string, key string) error
	// Scan calls fn for every key under prefix in every group this site
	// is in, with the sites of the key's group.
	Scan(ctx context.Context, prefix string, fn func(sites []string, key string, value []byte) error) error
	// Watch calls fn for every key written or deleted, locally or by
	// another member, in the order the store applied them, until stop is
	// called. fn must not block and must not call the store's writing
	// methods. A deletion may be reported while the key still has a
	// value (go-ds-crdt's delete hook fires when some versions of a key
	// were removed): the watcher reads the key again to know.
	Watch(fn func(sites []string, key string, value []byte, deleted bool)) (stop func())
}

// syncer is implemented by stores that can make writes durable on demand
// (*crdt.Manager).
type syncer interface {
	Sync(ctx context.Context) error
}

// batchWatcher is implemented by stores that report changes in batches
// (*crdt.Manager: after a heal its merges report thousands of keys). The
// catalog then folds each batch into its view under one lock instead of
// one lock per key. Change i is keys[i] in the group of sites[i], written
// with values[i] or deleted (deleted[i]); otherwise as Store.Watch.
type batchWatcher interface {
	WatchBatch(fn func(sites [][]string, keys []string, values [][]byte, deleted []bool)) (stop func())
}

// expecter is implemented by stores whose commits wait for writes
// announced to be on their way (*crdt.Manager: Config.CommitLinger).
type expecter interface {
	Expect(sites []string) (arrived func())
}

// Expect announces a write (Create, AppendOp) into the resources of sites
// that this site will make soon, such as the record of a replicated
// write whose replicas are still running it, and returns the function to
// call when the write is made or will not be. Writes into the same sites
// meanwhile may wait a little for it, and share its commit; a store that
// cannot do that ignores the announcement.
func (c *Catalog) Expect(sites []string) (arrived func()) {
	if e, ok := c.cfg.Store.(expecter); ok {
		return e.Expect(sites)
	}
	return func() {}
}

// Errors of the catalog.
var (
	ErrNotFound = errors.New("catalog: no such resource")
	ErrNotSelf  = errors.New("catalog: a site writes only its own record")
	ErrInvalid  = errors.New("catalog: invalid resource")
	ErrClosed   = errors.New("catalog: closed")
)

// Kinds of Change.
const (
	KindMeta    = "meta"    // the resource appeared here, or its replica set changed
	KindOp      = "op"      // an operation was recorded
	KindSite    = "site"    // a site's record changed
	KindRemoved = "removed" // this site no longer holds the resource
	// KindResync says the watcher fell behind and changes were dropped:
	// re-read what it cares about (List, Get). It has no ID.
	KindResync = "resync"
)

// Change says a resource changed on this site's catalog.
type Change struct {
	ID   string `json:"id,omitempty"`
	Kind string `json:"kind"`
	Site string `json:"site,omitempty"`
	Op   string `json:"op,omitempty"`
}

// Catalog is a site's view of the resources it holds, kept in a Store and
// materialized in memory. Safe for concurrent use.
type Catalog struct {
	cfg       Config
	log       *slog.Logger
	clock     *Clock
	stopStore func()
	ctx       context.Context // ends at Close: background work
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	gather    chan struct{} // wakes the gatherer

	mu      sync.RWMutex
	closed  bool
	entries map[string]*entry
	// owing holds the resources this site holds that show an operation
	// still owed by some site, kept with every change (Owing, the audit),
	// each with the sequence number of its last change (changes counts
	// them), so that the audit can tell a resource that stays owing
	// unchanged from one being caught up.
	owing    map[string]uint64
	changes  uint64
	byLocal  map[localKey]string
	watchers map[*watcher]struct{}
	toGather map[string]bool
	// auditRepairs counts resources whose view the audit corrected;
	// auditApplied, the values it folded in (changes the view had
	// missed); auditLate, values the view lacked at one audit and held at
	// the next (it was behind, not missing them). auditNoted holds, from
	// one audit to the next, the values the view lacked (bounded); only
	// the audit loop touches it.
	auditRepairs atomic.Int64
	auditLate    atomic.Int64
	auditApplied atomic.Int64
	auditNoted   map[string][]byte
	// lastChange is when the view last changed (unix ns): the audit
	// waits for a quiet view.
	lastChange atomic.Int64
}

type localKey struct{ service, site, local string }

// New loads the catalog from the store and follows its changes until
// Close. ctx bounds the loading only.
func New(ctx context.Context, cfg Config) (*Catalog, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Catalog{cfg: cfg, log: cfg.Logger.With("component", "catalog", "site", cfg.Self), clock: cfg.Clock,
		gather: make(chan struct{}, 1), entries: map[string]*entry{}, owing: map[string]uint64{}, byLocal: map[localKey]string{},
		watchers: map[*watcher]struct{}{}, toGather: map[string]bool{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// Follow changes before the scan so that nothing falls in between;
	// a key applied twice is harmless (see apply).
	if bw, ok := cfg.Store.(batchWatcher); ok {
		c.stopStore = bw.WatchBatch(c.applyBatch)
	} else {
		c.stopStore = cfg.Store.Watch(func(sites []string, key string, value []byte, deleted bool) {
			if deleted {
				c.applyDelete(sites, key)
				return
			}
			c.apply(sites, key, value)
		})
	}
	if err := cfg.Store.Scan(ctx, "/r/", func(sites []string, key string, value []byte) error {
		c.apply(sites, key, value)
		return nil
	}); err != nil {
		c.stopStore()
		c.cancel()
		return nil, fmt.Errorf("catalog: load: %w", err)
	}
	c.wg.Add(1)
	go c.gatherLoop()
	if cfg.AuditInterval > 0 {
		c.wg.Add(1)
		go c.auditLoop()
	}
	return c, nil
}

// Owing lists the resources this site holds that show an operation
// still owed by one of their sites, by id. It reads a set kept with every
// change: it costs the number of such resources, not of the catalog's.
func (c *Catalog) Owing() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.owing))
	for id := range c.owing {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Owes reports whether a resource this site holds shows an operation
// still owed by one of its sites: whether Owing lists it, at the cost of
// one lookup (a resolved resource is not built).
func (c *Catalog) Owes(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.owing[id]
	return ok
}

// OwingCount is how many resources Owing lists, without listing them.
func (c *Catalog) OwingCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.owing)
}

// Len is the number of resources this site holds (what List with no
// filter returns), without resolving them.
func (c *Catalog) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	for _, e := range c.entries {
		if e.visible {
			n++
		}
	}
	return n
}

// owes reports whether a visible entry shows an operation still owed.
//
// It runs on every change the view takes in, so it reads the slots
// directly instead of resolving the resource (which sorts its operations
// and builds every site's view): the same answer as a resolved resource
// with a non-empty Pending list, at a fraction of the cost.
func owes(e *entry) bool {
	if !e.visible {
		return false
	}
	for _, site := range e.best.Sites {
		rec, _, _ := e.record(site)
		for _, op := range e.ops {
			if op.v.Outcomes[site] != OutcomePending {
				continue
			}
			if _, done := rec.v.Applied[op.v.ID]; done {
				continue
			}
			if _, failed := rec.v.Failed[op.v.ID]; failed {
				continue
			}
			return true
		}
	}
	return false
}

// AuditRepairs counts the resources whose view the audit had to correct
// from the store.
func (c *Catalog) AuditRepairs() int64 { return c.auditRepairs.Load() }

// AuditLate counts values the view lacked at one audit and had received
// by the next: a view behind its store, not one that missed a change.
func (c *Catalog) AuditLate() int64 { return c.auditLate.Load() }

// AuditApplied counts the values the audit folded into the view: changes
// the store holds and the view still lacked an interval after the audit
// first saw them missing.
func (c *Catalog) AuditApplied() int64 { return c.auditApplied.Load() }

// auditLoop re-reads, every AuditInterval, the keys of the resources that
// show owed operations. Found by the convergence soak: a site's view kept
// an operation owed for minutes while its store held the record saying
// it was done (the view missed that change; a restart, which rebuilds the
// view from the store, showed it done). The audit folds such changes in.
//
// Only a resource that stayed owing, unchanged, for a whole interval is
// audited: one whose owed operations are being executed changes, and
// re-reading it would only cost (a returning site catching up on a
// thousand resources would read them all again every interval). One
// that every audit finds clean is audited less and less often (see
// auditBackoff).
//
// A value the view lacks is not folded in at once: the store may hold a
// change whose notice is on its way (this site's own write between its
// commit and its apply, or a merge being delivered). It is noted, and
// folded in only if the view still lacks it at the next audit: then it
// is a change the view missed, counted and logged.
func (c *Catalog) auditLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.AuditInterval)
	defer t.Stop()
	var previous map[string]uint64
	deferred, round := 0, 0
	backoff := auditBackoff{}
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		since := time.Since(time.Unix(0, c.lastChange.Load()))
		if !auditNow(since, c.cfg.AuditInterval, deferred) {
			deferred++
			continue
		}
		deferred = 0
		round++
		c.mu.RLock()
		now := maps.Clone(c.owing)
		c.mu.RUnlock()
		noted := c.auditNoted
		if len(noted) > 10000 {
			noted = nil
		}
		c.auditNoted = map[string][]byte{}
		suspect := notedResources(noted)
		ids := staleOwing(previous, now)
		ids = slices.DeleteFunc(ids, func(id string) bool { return !suspect[id] && !backoff.due(id, now[id], round) })
		for id := range suspect {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		for _, id := range ids {
			before := len(c.auditNoted)
			err := c.audit(c.ctx, id, noted)
			if err != nil && c.ctx.Err() == nil {
				c.log.Warn("audit a resource's view", "id", id, "err", err)
			}
			if err == nil && !suspect[id] && len(c.auditNoted) == before {
				backoff.clean(id, now[id], round)
			} else {
				delete(backoff, id)
			}
		}
		backoff.forget(now)
		previous = now
	}
}

// auditBackoff spaces out the audits of resources that stay owing,
// unchanged, and that each audit finds as the store holds them: a site
// down for hours owes on every resource made meanwhile, and re-reading
// them all every interval cost a steady share of the CPU (1,000 such
// resources: ~100 ms per round, which on a returning site's peers fell
// in its catch-up). After its nth clean audit in a row a resource waits
// 2ⁿ rounds, at most maxAuditSpacing, before the next; one that changes,
// stops owing, or whose audit finds a value missing from the view is
// audited as before. A change the view missed is still found, within
// maxAuditSpacing+1 rounds (66 s at the 2 s default) instead of 2.
type auditBackoff map[string]auditSpacing

type auditSpacing struct {
	seq   uint64 // the resource's last change when it was audited
	clean int    // clean audits in a row
	next  int    // the round it is due again
}

// maxAuditSpacing bounds the rounds between two audits of a resource.
const maxAuditSpacing = 32

// due reports whether a stale owing resource (last change seq) is audited
// in this round.
func (b auditBackoff) due(id string, seq uint64, round int) bool {
	s, ok := b[id]
	return !ok || s.seq != seq || round >= s.next
}

// clean notes a clean audit of a resource in a round.
func (b auditBackoff) clean(id string, seq uint64, round int) {
	s := b[id]
	if s.seq != seq {
		s = auditSpacing{seq: seq}
	}
	s.clean++
	s.next = round + min(1<<min(s.clean, 30), maxAuditSpacing)
	b[id] = s
}

// forget drops the resources that no longer owe.
func (b auditBackoff) forget(owing map[string]uint64) {
	for id := range b {
		if _, ok := owing[id]; !ok {
			delete(b, id)
		}
	}
}

// auditDeferrals bounds how many audit rounds in a row wait for a quiet
// view: a view that never stops changing is still audited every
// (auditDeferrals+1) intervals.
const auditDeferrals = 4

// auditNow decides whether an audit round runs, given how long ago the
// view last changed, the audit interval and how many rounds in a row
// were deferred. A round waits while the view changed within a quarter
// of the interval: the store is delivering changes (a heal merging
// thousands of keys), the resources being caught up change anyway, and
// the audit's reads would only take CPU from the merge (3 % of the
// agents' CPU in the first second of a heal). A change the view missed
// is found a few intervals later at worst.
func auditNow(sinceChange, interval time.Duration, deferred int) bool {
	return sinceChange >= interval/4 || deferred >= auditDeferrals
}

// notedResources lists the resources of the values an audit noted.
func notedResources(noted map[string][]byte) map[string]bool {
	out := map[string]bool{}
	for k := range noted {
		_, key, _ := strings.Cut(k, "\x00")
		if id, _, _, ok := parseKey(key); ok {
			out[id] = true
		}
	}
	return out
}

// staleOwing lists, in order, the resources owing in both snapshots with
// the same last change.
func staleOwing(previous, now map[string]uint64) []string {
	var out []string
	for id, seq := range now {
		if p, ok := previous[id]; ok && p == seq {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// audit reads again from the store every key of one resource the view
// knows of, and each site's record in each of its groups, folds them into
// the view, and counts and logs the resource if that changed what the
// view resolved. Keys are read one by one, group by group: one group that
// cannot be read does not keep the others from being audited.
//
// noted holds the values the previous audit found missing from the view:
// a value still missing and noted there is folded in; one missing for the
// first time is noted for the next audit (c.auditNoted).
func (c *Catalog) audit(ctx context.Context, id string, noted map[string][]byte) error {
	before, _ := c.Get(ctx, id)
	type slot struct{ group, key string }
	var slots []slot
	c.mu.RLock()
	if e, ok := c.entries[id]; ok {
		groups := map[string]bool{}
		if e.group != "" {
			groups[e.group] = true
		}
		for s := range e.metas {
			groups[s.group] = true
			slots = append(slots, slot{s.group, metaKey(id, s.writer)})
		}
		for s := range e.ops {
			groups[s.group] = true
			slots = append(slots, slot{s.group, opKey(id, s.op)})
		}
		for s := range e.records {
			groups[s.group] = true
		}
		for g := range groups {
			for _, site := range strings.Split(g, ",") {
				slots = append(slots, slot{g, siteKey(id, site)})
			}
		}
	}
	c.mu.RUnlock()
	var errs []error
	var folded []string
	for _, s := range slots {
		sites := strings.Split(s.group, ",")
		value, ok, err := c.cfg.Store.Get(ctx, sites, s.key)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s in {%s}: %w", s.key, s.group, err))
		case ok:
			// A view newer than the store (go-ds-crdt reports a change
			// before it commits it) holds another value and ignores this
			// one: not a miss either.
			k := s.group + "\x00" + s.key
			_, kind, name, _ := parseKey(s.key)
			if c.holds(id, kind, s.group, name, value) {
				if _, was := noted[k]; was {
					c.auditLate.Add(1)
				}
				continue
			}
			if !bytes.Equal(noted[k], value) {
				c.auditNoted[k] = value
				continue
			}
			if c.apply(sites, s.key, value) {
				c.auditApplied.Add(1)
				folded = append(folded, s.key+" in {"+s.group+"}")
			}
		}
	}
	if after, _ := c.Get(ctx, id); len(folded) > 0 && !reflect.DeepEqual(before, after) {
		c.auditRepairs.Add(1)
		c.log.Warn("the catalog's view had missed a change of a resource; corrected from the store", "id", id, "keys", folded)
	}
	return errors.Join(errs...)
}

// Close stops following the store, ends every watch and waits for the
// catalog's goroutines. Writes after Close fail with ErrClosed.
func (c *Catalog) Close() {
	c.closeOnce.Do(func() {
		c.stopStore()
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.cancel()
		c.wg.Wait()
	})
}

// Clock is the catalog's hybrid logical clock.
func (c *Catalog) Clock() *Clock { return c.clock }

// Self is this site's name.
func (c *Catalog) Self() string { return c.cfg.Self }

func metaKey(id, writer string) string { return "/r/" + id + "/meta@" + writer }
func opKey(id, op string) string       { return "/r/" + id + "/op/" + op }
func siteKey(id, site string) string   { return "/r/" + id + "/site/" + site }

// Key kinds, as parseKey returns them.
const (
	keyMeta = "meta"
	keyOp   = "op"
	keySite = "site"
)

// parseKey splits a catalog key. A meta key is meta@<writer>; "meta" alone
// (writer "") is the layout of the first version, still read.
func parseKey(key string) (id, kind, name string, ok bool) {
	rest, ok := strings.CutPrefix(key, "/r/")
	if !ok {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if !ValidID(parts[0]) {
		return "", "", "", false
	}
	switch {
	case len(parts) == 2 && parts[1] == "meta":
		return parts[0], keyMeta, "", true
	case len(parts) == 2 && strings.HasPrefix(parts[1], "meta@") && len(parts[1]) > len("meta@"):
		return parts[0], keyMeta, parts[1][len("meta@"):], true
	case len(parts) == 3 && (parts[1] == keyOp || parts[1] == keySite) && parts[2] != "":
		return parts[0], parts[1], parts[2], true
	}
	return "", "", "", false
}

// apply folds one stored key into the view. A value older than the one
// the slot holds (a change delivered after this site's own newer write)
// is ignored. Malformed values, which only a faulty or hostile member
// could write, are logged and skipped. It reports whether the view
// changed.
func (c *Catalog) apply(sites []string, key string, value []byte) bool {
	id, kind, name, ok := parseKey(key)
	if !ok {
		return false
	}
	group := groupOf(sites)
	if c.holds(id, kind, group, name, value) {
		return false // already applied: this site's own write, reported back by the store
	}
	// Decode outside the lock.
	d, ok := c.decode(key, id, kind, name, value)
	if !ok {
		return false
	}
	return c.applyDecoded(group, key, id, kind, name, slices.Clone(value), d)
}

// applyBatch folds a batch of changes reported by the store into the
// view, in order (see batchWatcher): the values are decoded outside the
// catalog's lock and folded in under one. A deletion, rare (the catalog
// deletes nothing; only a member's faulty write can need it), is read
// again from the store as applyDelete does, between the runs of writes
// around it.
func (c *Catalog) applyBatch(sites [][]string, keys []string, values [][]byte, deleted []bool) {
	start := 0
	for i := range keys {
		if !deleted[i] {
			continue
		}
		c.applyRun(sites[start:i], keys[start:i], values[start:i])
		c.applyDelete(sites[i], keys[i])
		start = i + 1
	}
	c.applyRun(sites[start:], keys[start:], values[start:])
}

// applyRun folds written keys into the view in order, under one lock.
func (c *Catalog) applyRun(sites [][]string, keys []string, values [][]byte) {
	type change struct {
		group, key, id, kind, name string
		raw                        []byte
		d                          decoded
	}
	changes := make([]change, 0, len(keys))
	groups := map[string]string{} // one name per sites slice: the store shares them per group
	c.mu.RLock()
	for i, key := range keys {
		id, kind, name, ok := parseKey(key)
		if !ok {
			continue
		}
		ss := sites[i]
		gk := strings.Join(ss, ",")
		group, ok := groups[gk]
		if !ok {
			group = groupOf(ss)
			groups[gk] = group
		}
		if c.holdsLocked(id, kind, group, name, values[i]) {
			continue // this site's own write, reported back by the store
		}
		changes = append(changes, change{group: group, key: key, id: id, kind: kind, name: name, raw: values[i]})
	}
	c.mu.RUnlock()
	n := 0
	for _, ch := range changes {
		d, ok := c.decode(ch.key, ch.id, ch.kind, ch.name, ch.raw)
		if !ok {
			continue
		}
		ch.d, ch.raw = d, slices.Clone(ch.raw) // the view keeps its own copy, as apply does
		changes[n] = ch
		n++
	}
	if n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range changes[:n] {
		c.applyDecodedLocked(ch.group, ch.key, ch.id, ch.kind, ch.name, ch.raw, ch.d)
	}
}

// decode decodes a stored value of a key of a given kind; false (logged)
// when it is malformed, which only a faulty or hostile member could
// write.
func (c *Catalog) decode(key, id, kind, name string, value []byte) (decoded, bool) {
	var (
		d     decoded
		err   error
		valid bool
	)
	switch kind {
	case keyMeta:
		d.meta = new(Meta)
		err = json.Unmarshal(value, d.meta)
		valid = err == nil && d.meta.ID == id && len(d.meta.Sites) > 0 && validSites(d.meta.Sites)
	case keyOp:
		d.op = new(Operation)
		err = json.Unmarshal(value, d.op)
		valid = err == nil && d.op.ID == name
	case keySite:
		d.rec = new(SiteRecord)
		err = json.Unmarshal(value, d.rec)
		valid = err == nil && d.rec.Site == name
	}
	if !valid {
		c.log.Warn("skipping a malformed catalog value", "key", key, "err", err)
		return decoded{}, false
	}
	return d, true
}

// decoded is a catalog value decoded: one of its fields is set, by the
// key's kind.
type decoded struct {
	meta *Meta
	op   *Operation
	rec  *SiteRecord
}

// applyOwn folds this site's own write into the view: the value it just
// encoded (raw, not kept by the caller) and the value encoded, so that
// the view does not decode what it made. v must decode from raw to
// itself (raw is json.Marshal(v), of a valid value).
func (c *Catalog) applyOwn(sites []string, key string, raw []byte, d decoded) bool {
	id, kind, name, ok := parseKey(key)
	if !ok {
		return false
	}
	return c.applyDecoded(groupOf(sites), key, id, kind, name, raw, d)
}

// applyDecoded is apply's second half: raw is the stored value, d the
// value decoded.
func (c *Catalog) applyDecoded(group, key, id, kind, name string, raw []byte, d decoded) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applyDecodedLocked(group, key, id, kind, name, raw, d)
}

// applyDecodedLocked is applyDecoded with c.mu held.
func (c *Catalog) applyDecodedLocked(group, key, id, kind, name string, raw []byte, d decoded) bool {
	value := raw
	e := c.entries[id]
	if e == nil {
		e = newEntry(id)
	}
	var stamps []Timestamp
	switch kind {
	case keyMeta:
		m := *d.meta
		slot := metaSlot{group, name}
		if old, ok := e.metas[slot]; ok && (bytes.Equal(old.raw, value) || old.v.Version.Compare(m.Version) > 0) {
			return false
		}
		e.metas[slot] = stored[Meta]{raw, m}
		stamps = []Timestamp{m.Created, m.Version}
	case keyOp:
		op := *d.op
		slot := opSlot{group, name}
		if old, ok := e.ops[slot]; ok && bytes.Equal(old.raw, value) {
			return false
		}
		e.ops[slot] = stored[Operation]{raw, op}
		stamps = []Timestamp{op.At}
	case keySite:
		rec := *d.rec
		slot := recSlot{group, name}
		if old, ok := e.records[slot]; ok && (bytes.Equal(old.raw, value) || old.v.At.Compare(rec.At) > 0) {
			return false
		}
		e.records[slot] = stored[SiteRecord]{raw, rec}
		stamps = []Timestamp{rec.At}
	}
	for _, t := range stamps {
		if err := c.clock.Observe(t); err != nil {
			c.log.Warn("not following a timestamp from the future", "key", key, "err", err)
		}
	}
	c.entries[id] = e
	c.changedLocked(e, group, Change{ID: id, Kind: kind, Site: siteOf(kind, name), Op: opOf(kind, name)})
	return true
}

// holds reports whether the slot of a key already holds exactly value.
func (c *Catalog) holds(id, kind, group, name string, value []byte) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.holdsLocked(id, kind, group, name, value)
}

// holdsLocked is holds with c.mu held (read or write).
func (c *Catalog) holdsLocked(id, kind, group, name string, value []byte) bool {
	e := c.entries[id]
	if e == nil {
		return false
	}
	var raw []byte
	switch kind {
	case keyMeta:
		raw = e.metas[metaSlot{group, name}].raw
	case keyOp:
		raw = e.ops[opSlot{group, name}].raw
	case keySite:
		raw = e.records[recSlot{group, name}].raw
	}
	return raw != nil && bytes.Equal(raw, value)
}

func validSites(sites []string) bool {
	for i, s := range sites {
		if !ValidSite(s) || slices.Contains(sites[:i], s) {
			return false
		}
	}
	return true
}

// applyDelete handles a deletion reported by the store: the key is read
// again, because go-ds-crdt reports a deletion also when only some
// versions of a key were removed, and because this site may have written
// the key again since.
func (c *Catalog) applyDelete(sites []string, key string) {
	id, kind, name, ok := parseKey(key)
	if !ok {
		return
	}
	value, present, err := c.cfg.Store.Get(c.ctx, sites, key)
	if err != nil {
		c.log.Warn("reading a deleted key again", "key", key, "err", err)
		return
	}
	if present {
		c.apply(sites, key, value)
		return
	}
	group := groupOf(sites)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[id]
	if e == nil {
		return
	}
	switch kind {
	case keyMeta:
		delete(e.metas, metaSlot{group, name})
	case keyOp:
		delete(e.ops, opSlot{group, name})
	case keySite:
		delete(e.records, recSlot{group, name})
	}
	c.changedLocked(e, group, Change{ID: id, Kind: kind, Site: siteOf(kind, name), Op: opOf(kind, name)})
}

// changedLocked re-derives an entry after one of its slots in group
// changed, updates the local-id index, tells the watchers, and schedules
// a gathering when keys sit outside the resource's current group.
func (c *Catalog) changedLocked(e *entry, group string, ch Change) {
	wasVisible, oldGroup, oldBest := e.visible, e.group, e.best
	for _, k := range e.index {
		if c.byLocal[k] == e.id {
			delete(c.byLocal, k)
		}
	}
	e.refresh(c.cfg.Self)
	for _, k := range e.index {
		c.byLocal[k] = e.id
	}
	c.changes++
	c.lastChange.Store(time.Now().UnixNano())
	if owes(e) {
		c.owing[e.id] = c.changes
	} else {
		delete(c.owing, e.id)
	}
	if e.empty() {
		delete(c.entries, e.id)
	}
	switch {
	case wasVisible && !e.visible:
		c.notifyLocked(Change{ID: e.id, Kind: KindRemoved})
	case !e.visible:
	case !wasVisible || ch.Kind == keyMeta && (oldGroup != e.group || oldBest == nil || oldBest.Version != e.best.Version):
		c.notifyLocked(Change{ID: e.id, Kind: KindMeta})
	case ch.Kind != keyMeta:
		c.notifyLocked(ch)
	}
	if e.visible && (group != e.group || oldGroup != "" && oldGroup != e.group) {
		c.toGather[e.id] = true
		select {
		case c.gather <- struct{}{}:
		default:
		}
	}
}

func siteOf(kind, name string) string {
	if kind == keySite {
		return name
	}
	return ""
}

func opOf(kind, name string) string {
	if kind == keyOp {
		return name
	}
	return ""
}

// gatherLoop copies into each re-homed resource's current group the keys
// it still holds only in another group (see entry.stragglers): an
// operation recorded in the old group while the resource moved, and this
// site's own record. Every member does it for itself; copies of an
// operation are identical bytes, so members copying the same one do not
// conflict.
func (c *Catalog) gatherLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.gather:
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(c.cfg.GatherDelay):
		}
		c.mu.Lock()
		ids := make([]string, 0, len(c.toGather))
		for id := range c.toGather {
			ids = append(ids, id)
		}
		clear(c.toGather)
		c.mu.Unlock()
		slices.Sort(ids)
		for _, id := range ids {
			if err := c.gatherOne(c.ctx, id); err != nil && c.ctx.Err() == nil {
				c.log.Warn("copying a resource's keys into its group", "id", id, "err", err)
			}
		}
	}
}

func (c *Catalog) gatherOne(ctx context.Context, id string) error {
	c.mu.RLock()
	e, ok := c.entries[id]
	var keys []string
	var values [][]byte
	var sites []string
	if ok {
		keys, values = e.stragglers(c.cfg.Self)
		if e.best != nil {
			sites = slices.Clone(e.best.Sites)
		}
	}
	c.mu.RUnlock()
	if len(keys) == 0 {
		return nil
	}
	if err := c.cfg.Store.PutBatch(ctx, sites, keys, values); err != nil {
		return err
	}
	for i := range keys {
		c.apply(sites, keys[i], values[i])
	}
	c.log.Debug("copied keys into the resource's group", "id", id, "keys", len(keys), "sites", sites)
	return nil
}

// Create records a new resource and the operation that created it, in one
// write to the group of its sites, and makes it durable before returning.
// This site must be one of the sites; it is recorded as the origin.
func (c *Catalog) Create(ctx context.Context, m Meta, op Operation) error {
	if !ValidID(m.ID) || m.Service == "" || len(m.Sites) == 0 || !validSites(m.Sites) || !slices.Contains(m.Sites, c.cfg.Self) {
		return fmt.Errorf("%w: id %q, service %q, sites %v (this site %s must be one)", ErrInvalid, m.ID, m.Service, m.Sites, c.cfg.Self)
	}
	if op.ID != "" && strings.Contains(op.ID, "/") {
		return fmt.Errorf("%w: operation id %q", ErrInvalid, op.ID)
	}
	if err := c.open(); err != nil {
		return err
	}
	if m.Created.IsZero() {
		m.Created = c.clock.Now()
	}
	m.Origin, m.Version = c.cfg.Self, Timestamp{}
	op.Resource, op.Origin = m.ID, c.cfg.Self
	if op.At.IsZero() {
		op.At = m.Created
	}
	if op.ID == "" {
		op.ID = NewID(time.UnixMilli(op.At.Wall))
	}
	m.CreateOp = op.ID
	// As decoding the JSON would leave them (omitempty): the view holds
	// the values it made as it holds those read back.
	if len(m.LocalIDs) == 0 {
		m.LocalIDs = nil
	}
	if len(m.Detached) == 0 {
		m.Detached = nil
	}
	if len(op.Body) == 0 {
		op.Body = nil
	}
	metaJSON, _ := json.Marshal(m)
	opJSON, _ := json.Marshal(op)
	keys := []string{metaKey(m.ID, c.cfg.Self), opKey(m.ID, op.ID)}
	vals := [][]byte{metaJSON, opJSON}
	if err := c.cfg.Store.PutBatch(ctx, m.Sites, keys, vals); err != nil {
		return fmt.Errorf("catalog: create %s: %w", m.ID, err)
	}
	// The view's copies share nothing with the caller's.
	vm, vop := m, op
	vm.Sites, vm.LocalIDs = slices.Clone(m.Sites), maps.Clone(m.LocalIDs)
	vop.Targets, vop.Outcomes, vop.Body = slices.Clone(op.Targets), maps.Clone(op.Outcomes), slices.Clone(op.Body)
	c.applyOwn(m.Sites, keys[0], metaJSON, decoded{meta: &vm})
	c.applyOwn(m.Sites, keys[1], opJSON, decoded{op: &vop})
	return c.sync(ctx)
}

func (c *Catalog) open() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

// sync makes the writes so far durable before the caller acknowledges them.
func (c *Catalog) sync(ctx context.Context) error {
	if s, ok := c.cfg.Store.(syncer); ok {
		if err := s.Sync(ctx); err != nil {
			return fmt.Errorf("catalog: %w", err)
		}
	}
	return nil
}

// AppendOp records an operation on a resource this site holds (op.Resource),
// stamped by this site unless op.At is set, and makes it durable.
func (c *Catalog) AppendOp(ctx context.Context, op Operation) error {
	if op.ID != "" && strings.Contains(op.ID, "/") {
		return fmt.Errorf("%w: operation id %q", ErrInvalid, op.ID)
	}
	sites, err := c.sitesOf(op.Resource)
	if err != nil {
		return err
	}
	op.Origin = c.cfg.Self
	if op.At.IsZero() {
		op.At = c.clock.Now()
	}
	if op.ID == "" {
		op.ID = NewID(time.UnixMilli(op.At.Wall))
	}
	data, _ := json.Marshal(op)
	if err := c.cfg.Store.Put(ctx, sites, opKey(op.Resource, op.ID), data); err != nil {
		return fmt.Errorf("catalog: record operation on %s: %w", op.Resource, err)
	}
	c.apply(sites, opKey(op.Resource, op.ID), data)
	return c.sync(ctx)
}

// SetSite writes this site's own record of a resource, stamped now. A
// record for another site is refused: ErrNotSelf.
func (c *Catalog) SetSite(ctx context.Context, id string, rec SiteRecord) error {
	if rec.Site == "" {
		rec.Site = c.cfg.Self
	}
	if rec.Site != c.cfg.Self {
		return fmt.Errorf("%w: %s cannot write %s's record", ErrNotSelf, c.cfg.Self, rec.Site)
	}
	sites, err := c.sitesOf(id)
	if err != nil {
		return err
	}
	rec.At = c.clock.Now()
	data, _ := json.Marshal(rec)
	if err := c.cfg.Store.Put(ctx, sites, siteKey(id, rec.Site), data); err != nil {
		return fmt.Errorf("catalog: record site %s of %s: %w", rec.Site, id, err)
	}
	c.apply(sites, siteKey(id, rec.Site), data)
	return nil
}

// Outcome is what this site did with one operation of a resource: the
// status it applied it with (or catalog.SupersededPrefix and why), or why
// its application refused it, and the local id a create gave.
type Outcome struct {
	Resource string
	Op       string
	LocalID  string
	Applied  string
	Failed   string
}

// RecordOutcomes folds outcomes into this site's records, one write per
// resource and one delta per replica set for the whole batch. Outcomes of
// resources this site no longer holds are dropped.
func (c *Catalog) RecordOutcomes(ctx context.Context, outs []Outcome) error {
	if err := c.open(); err != nil {
		return err
	}
	type batch struct {
		sites []string
		keys  []string
		vals  [][]byte
		recs  []SiteRecord
	}
	byRes := map[string][]Outcome{}
	var order []string
	for _, o := range outs {
		if _, ok := byRes[o.Resource]; !ok {
			order = append(order, o.Resource)
		}
		byRes[o.Resource] = append(byRes[o.Resource], o)
	}
	groups := map[string]*batch{}
	var groupOrder []string
	for _, id := range order {
		sites, err := c.sitesOf(id)
		if err != nil {
			continue
		}
		rec, _ := c.Record(id, c.cfg.Self)
		rec.Site = c.cfg.Self
		// The maps are copied once (the view keeps the older record's),
		// and an empty one is left out, as the JSON decodes.
		applied, failed := copyOnWrite{m: rec.Applied}, copyOnWrite{m: rec.Failed}
		for _, o := range byRes[id] {
			if o.LocalID != "" {
				rec.LocalID, rec.Status = o.LocalID, StatusOK
			}
			if o.Applied != "" {
				applied.set(o.Op, o.Applied)
			}
			if o.Failed != "" {
				failed.set(o.Op, o.Failed)
			}
		}
		rec.Applied, rec.Failed = applied.result(), failed.result()
		rec.At = c.clock.Now()
		data, _ := json.Marshal(rec)
		g := groupOf(sites)
		b, ok := groups[g]
		if !ok {
			b = &batch{sites: sites}
			groups[g] = b
			groupOrder = append(groupOrder, g)
		}
		b.keys, b.vals, b.recs = append(b.keys, siteKey(id, c.cfg.Self)), append(b.vals, data), append(b.recs, rec)
	}
	for _, g := range groupOrder {
		b := groups[g]
		if err := c.cfg.Store.PutBatch(ctx, b.sites, b.keys, b.vals); err != nil {
			return fmt.Errorf("catalog: record outcomes in %s: %w", g, err)
		}
		// Folded in as encoded, not decoded again.
		for i := range b.keys {
			c.applyOwn(b.sites, b.keys[i], b.vals[i], decoded{rec: &b.recs[i]})
		}
	}
	return nil
}

// copyOnWrite is a map shared with the view, copied at its first change.
type copyOnWrite struct {
	m      map[string]string
	copied bool
}

func (c *copyOnWrite) set(k, v string) {
	if !c.copied {
		c.m, c.copied = maps.Clone(c.m), true
		if c.m == nil {
			c.m = map[string]string{}
		}
	}
	c.m[k] = v
}

// result is the map, a copy of its own, nil when empty.
func (c *copyOnWrite) result() map[string]string {
	switch {
	case len(c.m) == 0:
		return nil
	case !c.copied:
		return maps.Clone(c.m)
	}
	return c.m
}

// Rehome moves a resource to a new replica set (attach, detach). This
// site writes its own meta, with the new sites and local ids and a version
// above every earlier one, into the group of the new sites together with
// every operation and its own record, then the same meta into the old
// group. Sites of the old set that are not in the new one read there that
// the resource left them, and stop holding it (Get: ErrNotFound); sites in
// both see the newer meta in either group, whichever arrives first, so the
// resource never disappears from them. Nothing is deleted. The other
// remaining sites copy their own records into the new group themselves
// (gatherLoop). This site must be in both sets.
//
// Two sites re-homing one resource concurrently: every site that sees
// both metas keeps the one with the higher version; a site that only the
// losing one added is left holding a resource the others no longer count
// it in, until it is attached again.
func (c *Catalog) Rehome(ctx context.Context, id string, sites []string, localIDs map[string]string) error {
	return c.Place(ctx, id, Placement{Sites: sites, LocalIDs: localIDs})
}

// Placement is where a resource is replicated after an attach or a detach
// (Catalog.Place).
type Placement struct {
	Sites    []string
	LocalIDs map[string]string
	// Scope, when set, replaces the scope shown for the resource (the
	// scope it was created with is kept in CreatedScope).
	Scope string
	// Version orders this placement among the resource's others: the
	// highest wins on every site. Zero means this site's clock now. A
	// caller that orders placements elsewhere (forward: the clock of the
	// site attached or detached) passes that stamp.
	Version Timestamp
	// Detached, when not nil, replaces Meta.Detached.
	Detached map[string]Timestamp
}

// Place is Rehome with the placement's scope and version (see Placement).
func (c *Catalog) Place(ctx context.Context, id string, p Placement) error {
	sites, localIDs := p.Sites, p.LocalIDs
	if len(sites) == 0 || !validSites(sites) || !slices.Contains(sites, c.cfg.Self) {
		return fmt.Errorf("%w: %s must stay in the replica set %v to move it", ErrInvalid, c.cfg.Self, sites)
	}
	if err := c.open(); err != nil {
		return err
	}
	c.mu.RLock()
	e, ok := c.entries[id]
	if !ok || !e.visible {
		c.mu.RUnlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	m := *e.best
	old := slices.Clone(m.Sites)
	ops := e.operations()
	rec, _, hasRec := e.record(c.cfg.Self)
	c.mu.RUnlock()

	m.Sites = slices.Clone(sites)
	m.LocalIDs = map[string]string{}
	for s, l := range localIDs {
		if slices.Contains(sites, s) && l != "" {
			m.LocalIDs[s] = l
		}
	}
	if p.Scope != "" && p.Scope != m.Scope {
		if m.CreatedScope == "" {
			m.CreatedScope = m.Scope
		}
		m.Scope = p.Scope
	}
	if p.Detached != nil {
		m.Detached = maps.Clone(p.Detached)
	}
	m.Version = p.Version
	if m.Version.IsZero() {
		m.Version = c.clock.Now()
	}
	metaJSON, _ := json.Marshal(m)
	keys := []string{metaKey(id, c.cfg.Self)}
	vals := [][]byte{metaJSON}
	for _, op := range ops {
		keys, vals = append(keys, opKey(id, op.v.ID)), append(vals, op.raw)
	}
	if hasRec {
		keys, vals = append(keys, siteKey(id, c.cfg.Self)), append(vals, rec.raw)
	}
	if err := c.cfg.Store.PutBatch(ctx, sites, keys, vals); err != nil {
		return fmt.Errorf("catalog: move %s to %v: %w", id, sites, err)
	}
	for i := range keys {
		c.apply(sites, keys[i], vals[i])
	}
	if groupOf(old) != groupOf(sites) {
		if err := c.cfg.Store.Put(ctx, old, keys[0], metaJSON); err != nil {
			return fmt.Errorf("catalog: tell %v that %s moved: %w", old, id, err)
		}
		c.apply(old, keys[0], metaJSON)
	}
	return c.sync(ctx)
}

// Record returns what a site last recorded of a resource (false if it
// recorded nothing this site holds).
func (c *Catalog) Record(id, site string) (SiteRecord, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[id]
	if !ok {
		return SiteRecord{}, false
	}
	rec, _, ok := e.record(site)
	return rec.v, ok
}

// sitesOf returns the replica set of a resource this site holds.
func (c *Catalog) sitesOf(id string) ([]string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, ErrClosed
	}
	e, ok := c.entries[id]
	if !ok || !e.visible {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return slices.Clone(e.best.Sites), nil
}

// Get returns a resource's resolved view: ErrNotFound unless this site is
// in its replica set and holds its meta.
func (c *Catalog) Get(_ context.Context, id string) (Resource, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[id]
	if !ok {
		return Resource{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	r, ok := e.resolve()
	if !ok {
		return Resource{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r, nil
}

// Filter selects resources in List; empty fields match everything.
type Filter struct {
	Service string // only this service's resources
	Site    string // only resources replicated on this site
}

// List returns the resources matching f, by id (creation order).
func (c *Catalog) List(_ context.Context, f Filter) ([]Resource, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Resource, 0, len(c.entries))
	for _, e := range c.entries {
		if !e.visible || (f.Service != "" && e.best.Service != f.Service) || (f.Site != "" && !slices.Contains(e.best.Sites, f.Site)) {
			continue
		}
		r, _ := e.resolve()
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Resource) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// LookupLocal finds the global id of the resource that a site's
// application knows as localID, among the resources this site holds. It
// reads an index kept up to date with every change: O(1), never blocks.
func (c *Catalog) LookupLocal(service, site, localID string) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.byLocal[localKey{service, site, localID}]
	return id, ok
}
