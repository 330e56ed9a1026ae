package crdt

import (
	"context"
	"sync/atomic"

	crdt "github.com/ipfs/go-ds-crdt"
	"github.com/prometheus/client_golang/prometheus"
)

// A replica's first heads, and the local write that must not build on
// them before they are merged.
//
// go-ds-crdt v0.6.8 records the heads of an announcement that reaches a
// replica with no heads as the replica's heads at once, before it walks
// them ("start building on recent heads": handleNext), then walks each.
// A local write committed during that walk (cheops commits on the
// writer's goroutine, beside go-ds-crdt's announcement goroutine) takes
// those heads as its node's parents: the write's node replaces them as
// the head, and the parent it finds not merged is returned to nobody
// (go-ds-crdt logs "bug: created a block to unknown children"). When the
// announcement's walk then reaches the bottom, it records its root as a
// head again: heads [Y, X] with Y below the write X, where every other
// member holds [X]. Anti-entropy finds the heads different at every
// round, pushes X both ways, and nothing changes: X is a head here. Seen
// in 18 groups of a 100 sites × 100,000 writes run (2026-12-04, traced),
// 6 of 50 × 30,000; the group of 100 × 100,000 whose 2 entries never
// arrived had that signature.
//
// seedGate keeps the two apart: while the replica may have no heads, a
// commit and the merge of an announcement take one token, so a write
// either comes first (the announcement then finds a head and is walked
// as usual) or waits until the announcement's walk has ended (the write
// then links merged heads). Once the replica has a head it always has
// one (go-ds-crdt never removes the last), and the gate costs an atomic
// load.
type seedGate struct {
	// token is held by a commit, or by go-ds-crdt's announcement
	// goroutine from the Next that returned a seeding announcement to
	// the next Next.
	token chan struct{}
	// seeded: the replica has a head; the gate is open for good.
	seeded atomic.Bool
	// store is the replica's go-ds-crdt store, once opened.
	store atomic.Pointer[crdt.Datastore]
	// holding: the announcement goroutine holds token (only that
	// goroutine reads or writes it).
	holding bool
}

func newSeedGate() *seedGate { return &seedGate{token: make(chan struct{}, 1)} }

// hasHeads reports whether the replica has a head (false while its store
// is not open yet: the caller then keeps the token).
func (s *seedGate) hasHeads(ctx context.Context) bool {
	st := s.store.Load()
	if st == nil {
		return false
	}
	if len(st.InternalStats(ctx).Heads) > 0 {
		s.seeded.Store(true)
		return true
	}
	return false
}

// take takes the token, waiting with ctx.
func (s *seedGate) take(ctx context.Context) error {
	select {
	case s.token <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// merging is called by the announcement goroutine when it has taken an
// announcement: while the replica has no heads, it keeps the token until
// merged.
func (s *seedGate) merging(ctx context.Context) error {
	if s.seeded.Load() {
		return nil
	}
	if err := s.take(ctx); err != nil {
		return err
	}
	if s.hasHeads(ctx) {
		<-s.token
		return nil
	}
	s.holding = true
	return nil
}

// merged is called by the announcement goroutine when go-ds-crdt asks
// for the next announcement: the previous one is merged.
func (s *seedGate) merged() {
	if s.holding {
		s.holding = false
		<-s.token
	}
}

// committing is called before a local commit: while the replica may have
// no heads, it takes the token (waiting with ctx for an announcement's
// walk to end). done gives it back once the commit ended.
func (s *seedGate) committing(ctx context.Context, waited prometheus.Counter) (done func(), err error) {
	if s.seeded.Load() {
		return func() {}, nil
	}
	select {
	case s.token <- struct{}{}:
	default:
		waited.Inc()
		if err := s.take(ctx); err != nil {
			return nil, err
		}
	}
	return func() {
		s.hasHeads(ctx)
		<-s.token
	}, nil
}
