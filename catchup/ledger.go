package catchup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// Ledger remembers, on one site, the operations its application has run
// for other sites' requests, by operation id. When a site that forwarded
// a write lost the answer (a cut in the middle of the request), it records
// the site as pending; the ledger lets that site recognise, when it later
// finds the operation owed, that it already ran it.
type Ledger struct{ store ds.Datastore }

// NewLedger keeps the ledger in the site's own (not replicated) datastore.
func NewLedger(store ds.Datastore) *Ledger { return &Ledger{store: store} }

var ledgerPrefix = ds.NewKey("/cheops/catchup/executed")

// Executed is what the ledger keeps of one operation.
// Status 0 means the operation is running (Begin) and has no answer yet.
type Executed struct {
	Status  int       `json:"status"`
	LocalID string    `json:"local_id,omitempty"`
	Started time.Time `json:"started"`
}

// Running reports whether the operation was begun and has no answer yet.
func (e Executed) Running() bool { return e.Status == 0 }

// Begin notes that an operation is about to run here, so that the
// catch-up does not run it a second time meanwhile.
func (l *Ledger) Begin(ctx context.Context, op string) error {
	return l.Record(ctx, op, Executed{Started: time.Now().UTC()})
}

// Record notes that an operation ran here with this outcome; it is synced
// before the answer leaves the site.
func (l *Ledger) Record(ctx context.Context, op string, e Executed) error {
	if l == nil || op == "" {
		return nil
	}
	data, _ := json.Marshal(e)
	key := ledgerPrefix.ChildString(op)
	if err := l.store.Put(ctx, key, data); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if err := l.store.Sync(ctx, key); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

// Lookup returns what ran for op, if it did.
func (l *Ledger) Lookup(ctx context.Context, op string) (Executed, bool, error) {
	var e Executed
	if l == nil {
		return e, false, nil
	}
	data, err := l.store.Get(ctx, ledgerPrefix.ChildString(op))
	if errors.Is(err, ds.ErrNotFound) {
		return e, false, nil
	}
	if err != nil {
		return e, false, fmt.Errorf("ledger: %w", err)
	}
	return e, true, json.Unmarshal(data, &e)
}

// Forget drops an operation that did not succeed here, so that the
// catch-up runs it normally.
func (l *Ledger) Forget(ctx context.Context, op string) error {
	if l == nil || op == "" {
		return nil
	}
	if err := l.store.Delete(ctx, ledgerPrefix.ChildString(op)); err != nil && !errors.Is(err, ds.ErrNotFound) {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}
