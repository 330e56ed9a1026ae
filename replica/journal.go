package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"

	"cheops/catalog"
)

// The journal lives in the site's own datastore, under journalRoot:
//
//	/cheops/replica/r/<resource>/local        this site's local id
//	/cheops/replica/r/<resource>/op/<op id>   an execution (entry)
//	/cheops/replica/publish/<op id>           an operation an origin is
//	                                          executing and has not yet
//	                                          recorded in the catalog
//
// It is never replicated: it says what this site's application did.
var journalRoot = ds.NewKey("/cheops/replica")

// Execution states of a journal entry.
const (
	stateBegun = "begun" // written (synced) before the application is called
	stateDone  = "done"  // the outcome is known
)

// entry is one operation's execution at this site.
type entry struct {
	Op    catalog.Operation `json:"op"`
	State string            `json:"state"`
	// Status is the application's answer (0 while begun, or when the
	// operation was superseded and not executed).
	Status int `json:"status,omitempty"`
	// Outcome is what the site records in the catalog: a status code, or
	// catalog.SupersededPrefix + why. Empty when Failed is set.
	Outcome string `json:"outcome,omitempty"`
	// Failed says why the application refused the operation (final).
	Failed  string    `json:"failed,omitempty"`
	LocalID string    `json:"local_id,omitempty"`
	Started time.Time `json:"started"`
	// early marks a begun entry this process journaled ahead of the call
	// (Executor.BeginOwed) and has not made the call of yet: the
	// operation has not run, although the journal says begun. Never
	// journaled: after a restart the entry is a maybe-executed one.
	early bool
	// AttachBase is set when the operation makes the copy an attach sent
	// (Executor.Attach): the base that attach was sent with. Journaled
	// with the begun entry, it tells a later attach that a copy may be
	// there although no outcome or stamp was journaled.
	AttachBase *catalog.Timestamp `json:"attach_base,omitempty"`
}

// applied reports whether the entry counts for the order: executed with
// success (a delete answered 404 counts: the item is gone).
func (e *entry) applied() bool {
	return e.State == stateDone && e.Failed == "" && !strings.HasPrefix(e.Outcome, catalog.SupersededPrefix) && e.Status != 0
}

// The keys of catalog ids (catalog.ValidID: 26 letters and digits) are
// clean as written and built as such (ds.RawKey); ChildString cleans
// each part it adds, a path.Clean per part on every journal access.
// Any other id goes through ChildString, as every key did before.

func resourceKey(id string) ds.Key {
	if catalog.ValidID(id) {
		return ds.RawKey(journalRoot.String() + "/r/" + id)
	}
	return journalRoot.ChildString("r").ChildString(id)
}

func opEntryKey(res, op string) ds.Key {
	if catalog.ValidID(res) && catalog.ValidID(op) {
		return ds.RawKey(journalRoot.String() + "/r/" + res + "/op/" + op)
	}
	return resourceKey(res).ChildString("op").ChildString(op)
}

func localKey(res string) ds.Key {
	if catalog.ValidID(res) {
		return ds.RawKey(journalRoot.String() + "/r/" + res + "/local")
	}
	return resourceKey(res).ChildString("local")
}

func publishKey(op string) ds.Key {
	if catalog.ValidID(op) {
		return ds.RawKey(journalRoot.String() + "/publish/" + op)
	}
	return journalRoot.ChildString("publish").ChildString(op)
}

// journal reads and writes entries.
type journal struct {
	store ds.Datastore
	// later holds the values written with putLater and not yet in the
	// store; nil for a journal that writes everything at once.
	later *outbox
}

// outbox holds journal values written later, in one batch (flushLater).
// Its lock is held while a batch is written, so that a value written at
// once after one held here (a newer value of the same key) is never
// overwritten by the batch, and a read finds a value either here or in
// the store.
type outbox struct {
	mu   sync.Mutex
	vals map[ds.Key][]byte
}

// maxLater bounds the values an outbox holds: the write that reaches it
// writes them all (a caller that never flushes still writes in batches).
const maxLater = 256

// putLater keeps an entry (and, when raw is not nil, raw under rawKey)
// for the next batch (flushLater) rather than writing it now. It is for
// outcomes whose loss in a crash is harmless (see Executor.finish); reads
// through the journal see them at once.
func (j journal) putLater(ctx context.Context, key ds.Key, e *entry, rawKey ds.Key, raw []byte) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	o := j.later
	o.mu.Lock()
	if o.vals == nil {
		o.vals = make(map[ds.Key][]byte, maxLater)
	}
	o.vals[key] = data
	if raw != nil {
		o.vals[rawKey] = raw
	}
	full := len(o.vals) >= maxLater
	o.mu.Unlock()
	if full {
		return j.flushLater(ctx)
	}
	return nil
}

// flushLater writes the values putLater holds, in one batch (not
// synced). On failure they stay held, for the next flush.
func (j journal) flushLater(ctx context.Context) error {
	o := j.later
	if o == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.vals) == 0 {
		return nil
	}
	b, ok := j.store.(ds.Batching)
	if !ok {
		for k, v := range o.vals {
			if err := j.store.Put(ctx, k, v); err != nil {
				return fmt.Errorf("replica: journal %s: %w", k, err)
			}
			delete(o.vals, k)
		}
		return nil
	}
	batch, err := b.Batch(ctx)
	if err != nil {
		return fmt.Errorf("replica: journal: %w", err)
	}
	for k, v := range o.vals {
		if err := batch.Put(ctx, k, v); err != nil {
			return fmt.Errorf("replica: journal %s: %w", k, err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("replica: journal: %w", err)
	}
	clear(o.vals)
	return nil
}

// held returns the value putLater holds for key, if any.
func (j journal) held(key ds.Key) ([]byte, bool) {
	if j.later == nil {
		return nil, false
	}
	j.later.mu.Lock()
	defer j.later.mu.Unlock()
	v, ok := j.later.vals[key]
	return v, ok
}

// supersede drops the held values of keys about to be written at once:
// the newer values. It waits for a batch being written.
func (j journal) supersede(keys ...ds.Key) {
	if j.later == nil {
		return
	}
	j.later.mu.Lock()
	defer j.later.mu.Unlock()
	for _, k := range keys {
		delete(j.later.vals, k)
	}
}

func (j journal) put(ctx context.Context, key ds.Key, v any, sync bool) error {
	j.supersede(key)
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	if err := j.store.Put(ctx, key, data); err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	if sync {
		if err := j.store.Sync(ctx, key); err != nil {
			return fmt.Errorf("replica: journal sync: %w", err)
		}
	}
	return nil
}

// putWith writes v under key and, when raw is not nil, raw under
// rawKey, in one batch when the store has them (not synced).
func (j journal) putWith(ctx context.Context, key ds.Key, v any, rawKey ds.Key, raw []byte) error {
	j.supersede(key, rawKey)
	b, ok := j.store.(ds.Batching)
	if raw == nil || !ok {
		if raw != nil {
			if err := j.store.Put(ctx, rawKey, raw); err != nil {
				return fmt.Errorf("replica: journal %s: %w", rawKey, err)
			}
		}
		return j.put(ctx, key, v, false)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	batch, err := b.Batch(ctx)
	if err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	if err := batch.Put(ctx, rawKey, raw); err != nil {
		return fmt.Errorf("replica: journal %s: %w", rawKey, err)
	}
	if err := batch.Put(ctx, key, data); err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("replica: journal %s: %w", key, err)
	}
	return nil
}

// putAll writes each value under its key in one batch, synced.
func (j journal) putAll(ctx context.Context, keys []ds.Key, vs []any) error {
	j.supersede(keys...)
	b, ok := j.store.(ds.Batching)
	if !ok {
		for i, k := range keys {
			if err := j.put(ctx, k, vs[i], i == len(keys)-1); err != nil {
				return err
			}
		}
		return nil
	}
	batch, err := b.Batch(ctx)
	if err != nil {
		return fmt.Errorf("replica: journal: %w", err)
	}
	for i, k := range keys {
		data, err := json.Marshal(vs[i])
		if err != nil {
			return fmt.Errorf("replica: journal %s: %w", k, err)
		}
		if err := batch.Put(ctx, k, data); err != nil {
			return fmt.Errorf("replica: journal %s: %w", k, err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("replica: journal: %w", err)
	}
	if err := j.store.Sync(ctx, keys[0]); err != nil {
		return fmt.Errorf("replica: journal sync: %w", err)
	}
	return nil
}

// load reads what the journal holds of one resource, in one scan of its
// keys.
func (j journal) load(ctx context.Context, res string) (local string, entries map[string]*entry, err error) {
	entries = map[string]*entry{}
	root := resourceKey(res).String()
	rs, err := j.store.Query(ctx, query.Query{Prefix: root})
	if err != nil {
		return "", nil, fmt.Errorf("replica: journal of %s: %w", res, err)
	}
	defer rs.Close()
	for r := range rs.Next() {
		if r.Error != nil {
			return "", nil, fmt.Errorf("replica: journal of %s: %w", res, r.Error)
		}
		switch rest := strings.TrimPrefix(r.Key, root); {
		case rest == "/local":
			local = string(r.Value)
		case strings.HasPrefix(rest, "/op/"):
			var e entry
			if err := json.Unmarshal(r.Value, &e); err != nil {
				return "", nil, fmt.Errorf("replica: journal entry %s: %w", r.Key, err)
			}
			entries[e.Op.ID] = &e
		}
	}
	// The values held for a later batch are newer than the store's.
	if j.later != nil {
		j.later.mu.Lock()
		defer j.later.mu.Unlock()
		for k, v := range j.later.vals {
			switch rest, ok := strings.CutPrefix(k.String(), root); {
			case !ok:
			case rest == "/local":
				local = string(v)
			case strings.HasPrefix(rest, "/op/"):
				var e entry
				if err := json.Unmarshal(v, &e); err != nil {
					return "", nil, fmt.Errorf("replica: journal entry %s: %w", k, err)
				}
				entries[e.Op.ID] = &e
			}
		}
	}
	return local, entries, nil
}

// local reads this site's local id of a resource ("" when none).
func (j journal) local(ctx context.Context, res string) (string, error) {
	if v, ok := j.held(localKey(res)); ok {
		return string(v), nil
	}
	data, err := j.store.Get(ctx, localKey(res))
	switch {
	case errors.Is(err, ds.ErrNotFound):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("replica: journal of %s: %w", res, err)
	}
	return string(data), nil
}

// entry reads one operation's entry (nil when none).
func (j journal) entry(ctx context.Context, res, op string) (*entry, error) {
	data, ok := j.held(opEntryKey(res, op))
	var err error
	if !ok {
		data, err = j.store.Get(ctx, opEntryKey(res, op))
	}
	switch {
	case errors.Is(err, ds.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("replica: journal of %s: %w", res, err)
	}
	var e entry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("replica: journal entry %s: %w", opEntryKey(res, op), err)
	}
	return &e, nil
}

// Intent is an operation its origin is executing and has not recorded in
// the catalog yet: after a crash in between, the origin records it at
// start, so that no site is left holding an operation the others never
// hear of.
type Intent struct {
	Op catalog.Operation `json:"op"`
	// Meta is set for a create: the resource to record with it.
	Meta *catalog.Meta `json:"meta,omitempty"`
}

// Intend writes an intent, synced, before the operation is sent anywhere.
func (x *Executor) Intend(ctx context.Context, in Intent) error {
	return x.journal.put(ctx, publishKey(in.Op.ID), in, true)
}

// IntendAndBegin is Intend for an operation that runs at this site too,
// as local, when local is a Fresh create: the create's begun entry goes
// into the intent's synced write, and the job returned does not journal
// it again when applied (one synced write per create at its origin
// instead of two, the intent's then the begun entry's). The intent's
// operation must be local's. Anything else is Intend, and local comes
// back as it was.
func (x *Executor) IntendAndBegin(ctx context.Context, in Intent, local Job) (Job, error) {
	if !local.Create || !local.Fresh || local.Op.ID != in.Op.ID {
		return local, x.Intend(ctx, in)
	}
	begun := time.Now().UTC()
	e := &entry{Op: local.Op, State: stateBegun, Started: begun, AttachBase: local.attachBase}
	if err := x.journal.putAll(ctx, []ds.Key{publishKey(in.Op.ID), opEntryKey(local.Op.Resource, local.Op.ID)}, []any{in, e}); err != nil {
		return local, err
	}
	local.begun = begun
	return local, nil
}

// Published drops an intent once its operation is in the catalog (not
// synced: a lost drop only records the operation once more, harmlessly).
func (x *Executor) Published(ctx context.Context, op string) error {
	if err := x.journal.store.Delete(ctx, publishKey(op)); err != nil && !errors.Is(err, ds.ErrNotFound) {
		return fmt.Errorf("replica: drop intent %s: %w", op, err)
	}
	return nil
}

// Intents lists the intents left by an earlier run.
func (x *Executor) Intents(ctx context.Context) ([]Intent, error) {
	rs, err := x.journal.store.Query(ctx, query.Query{Prefix: journalRoot.ChildString("publish").String()})
	if err != nil {
		return nil, fmt.Errorf("replica: intents: %w", err)
	}
	defer rs.Close()
	var out []Intent
	for r := range rs.Next() {
		if r.Error != nil {
			return nil, fmt.Errorf("replica: intents: %w", r.Error)
		}
		var in Intent
		if err := json.Unmarshal(r.Value, &in); err != nil {
			return nil, fmt.Errorf("replica: intent %s: %w", r.Key, err)
		}
		out = append(out, in)
	}
	return out, nil
}
