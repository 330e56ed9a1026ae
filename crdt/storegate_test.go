package crdt

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// blockingStore is a blockstore whose Get waits for release.
type blockingStore struct {
	blockstore.Blockstore
	entered, release chan struct{}
}

func (b blockingStore) Get(context.Context, cid.Cid) (blocks.Block, error) {
	close(b.entered)
	<-b.release
	return nil, errors.New("released")
}

// The gate's close waits for a call in flight and then refuses the next
// ones: a reader the manager does not own (boxo's blockservice goroutine
// of a DAG walk) reads no closed datastore.
func TestStoreGateWaitsThenRefuses(t *testing.T) {
	var gate storeGate
	inner := blockingStore{entered: make(chan struct{}), release: make(chan struct{})}
	b := gatedBlockstore{Blockstore: inner, gate: &gate}
	go func() { _, _ = b.Get(context.Background(), cid.Cid{}) }()
	<-inner.entered
	closed := make(chan struct{})
	go func() {
		gate.close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("close returned while a call was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(inner.release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return once the call ended")
	}
	if _, err := b.Get(context.Background(), cid.Cid{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after close: %v, want ErrClosed", err)
	}
	if err := b.Put(context.Background(), blocks.NewBlock([]byte("x"))); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after close: %v, want ErrClosed", err)
	}
}

// After Close, a group's blockstore refuses reads instead of reaching
// the datastore its owner closes next.
func TestGroupBlockstoreClosedWithManager(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ga, _ := joinPair(t, a, b)
	ctx := context.Background()
	blk := blocks.NewBlock([]byte("a block a holds"))
	if err := ga.blocks().Put(ctx, blk); err != nil {
		t.Fatal(err)
	}
	if ok, err := ga.blocks().Has(ctx, blk.Cid()); err != nil || !ok {
		t.Fatalf("Has before Close: %v %v", ok, err)
	}
	if err := a.m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ga.blocks().Get(ctx, blk.Cid()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
	n.stop("a", true)
}
