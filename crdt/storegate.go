package crdt

import (
	"context"
	"fmt"
	"sync"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// storeGate lets calls into the groups' blockstores through until the
// manager has closed its groups, then waits for those in flight and
// refuses the rest (errClosedStore). The datastore is the caller's, who
// closes it once Close returns, and some readers of a group's blocks are
// not the manager's to wait for: boxo's blockservice reads the
// blockstore on a goroutine of its own for each GetBlocks of a replica's
// DAG walk, which goes on after go-ds-crdt's Close until it next looks at
// its context. One such read after the caller closed pebble panicked
// ("pebble: closed") as 100 in-process sites stopped in the middle of
// merges.
//
// The manager's own fetches (GetBlocks) are waited for by Close (enter);
// the gate is for the readers it does not own.
type storeGate struct {
	// mu is held shared by each call for its length, and exclusively
	// by close: close waits for the calls in flight, and a call that
	// comes after it finds closed.
	mu     sync.RWMutex
	closed bool
}

// errClosedStore is what a blockstore call gets once the manager closed.
var errClosedStore = fmt.Errorf("%w: the group's blockstore is closed", ErrClosed)

// run runs one call into a blockstore unless the gate is closed
// (errClosedStore).
func (s *storeGate) run(call func() error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errClosedStore
	}
	return call()
}

// close refuses new calls, once those in flight (each one datastore
// operation) have ended.
func (s *storeGate) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// gatedBlockstore is a group's blockstore behind the manager's gate.
type gatedBlockstore struct {
	blockstore.Blockstore
	gate *storeGate
}

func (b gatedBlockstore) Get(ctx context.Context, c cid.Cid) (blk blocks.Block, err error) {
	err = b.gate.run(func() error { blk, err = b.Blockstore.Get(ctx, c); return err })
	return blk, err
}

func (b gatedBlockstore) Has(ctx context.Context, c cid.Cid) (ok bool, err error) {
	err = b.gate.run(func() error { ok, err = b.Blockstore.Has(ctx, c); return err })
	return ok, err
}

func (b gatedBlockstore) GetSize(ctx context.Context, c cid.Cid) (size int, err error) {
	err = b.gate.run(func() error { size, err = b.Blockstore.GetSize(ctx, c); return err })
	return size, err
}

func (b gatedBlockstore) Put(ctx context.Context, blk blocks.Block) error {
	return b.gate.run(func() error { return b.Blockstore.Put(ctx, blk) })
}

func (b gatedBlockstore) PutMany(ctx context.Context, blks []blocks.Block) error {
	return b.gate.run(func() error { return b.Blockstore.PutMany(ctx, blks) })
}

func (b gatedBlockstore) DeleteBlock(ctx context.Context, c cid.Cid) error {
	return b.gate.run(func() error { return b.Blockstore.DeleteBlock(ctx, c) })
}
