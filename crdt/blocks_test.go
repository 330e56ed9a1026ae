package crdt

import (
	"bufio"
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// slowBlockStreams is a host whose block streams take delay to open, as
// on a busy site (the stream, then the sample of known blocks, before
// the request goes).
type slowBlockStreams struct {
	host.Host
	delay time.Duration
}

func (h slowBlockStreams) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if slices.Contains(pids, BlockProtocol) {
		select {
		case <-time.After(h.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Host.NewStream(ctx, p, pids...)
}

// TestConcurrentWalksFetchABlockOnce: two walks of a group that need the
// same missing block at once send one request: the second waits for the
// fetch the first started, even while that fetch is still opening its
// stream.
func TestConcurrentWalksFetchABlockOnce(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) { c.Host = slowBlockStreams{Host: c.Host, delay: 300 * time.Millisecond} }
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ga, gb := joinPair(t, a, b)
	blk := blocks.NewBlock([]byte("a block only a holds"))
	if err := ga.blocks().Put(ctx, blk); err != nil {
		t.Fatal(err)
	}
	before := counterValue(b.m.metrics.fetches)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = exchange{gb}.getMissing(ctx, []cid.Cid{blk.Cid()}) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if has, _ := gb.blocks().Has(ctx, blk.Cid()); !has {
		t.Fatal("b does not hold the block")
	}
	if got := counterValue(b.m.metrics.fetches) - before; got != 1 {
		t.Fatalf("%v block requests for one block wanted by two walks at once, want 1", got)
	}
}

// countingWriter counts the Write calls made on it.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(b)
}

// A frame written on an unbuffered stream goes in one Write (one yamux
// frame, one TLS record), and reads back as writeFrame's.
func TestWriteFrameOnceIsOneWrite(t *testing.T) {
	for _, body := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("d"), 300)} {
		var once countingWriter
		if err := writeFrameOnce(&once, body); err != nil {
			t.Fatal(err)
		}
		if once.writes != 1 {
			t.Errorf("%d writes for a frame of %d bytes, want 1", once.writes, len(body))
		}
		var two bytes.Buffer
		_ = writeFrame(&two, body)
		if !bytes.Equal(once.Bytes(), two.Bytes()) {
			t.Errorf("frame of %d bytes: %x, writeFrame gives %x", len(body), once.Bytes(), two.Bytes())
		}
		got, err := readFrame(bufio.NewReader(&once.Buffer), 1024)
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("read back %q, %v", got, err)
		}
	}
}

// stalledBlockStreams is a host whose block streams do not open until
// release is closed, whatever their context says: a fetch stuck in a
// dial, as on a starved host. entered is closed when one first waits.
type stalledBlockStreams struct {
	host.Host
	entered, release chan struct{}
	once             *sync.Once
}

func (h stalledBlockStreams) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if slices.Contains(pids, BlockProtocol) {
		h.once.Do(func() { close(h.entered) })
		<-h.release
	}
	return h.Host.NewStream(ctx, p, pids...)
}

// TestCloseWaitsForBlockFetches: the manager's Close returns only once
// the goroutines of GetBlocks have ended, since they read the datastore
// the caller closes next. One that outlived its manager panicked in
// pebble ("pebble: closed") when 100 in-process sites stopped in the
// middle of merges.
func TestCloseWaitsForBlockFetches(t *testing.T) {
	n := newNet(t, "a", "b")
	stall := stalledBlockStreams{entered: make(chan struct{}), release: make(chan struct{}), once: &sync.Once{}}
	n.tune = func(c *Config) {
		if c.Host.ID() == n.ids["a"] {
			stall.Host = c.Host
			c.Host = stall
		}
	}
	n.startAll("a", "b")
	a, b := n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ga, gb := joinPair(t, a, b)
	blk := blocks.NewBlock([]byte("a block only b holds"))
	if err := gb.blocks().Put(ctx, blk); err != nil {
		t.Fatal(err)
	}
	out, err := exchange{ga}.GetBlocks(ctx, []cid.Cid{blk.Cid()})
	if err != nil {
		t.Fatal(err)
	}
	<-stall.entered
	closed := make(chan struct{})
	go func() {
		_ = a.m.Close()
		close(closed)
	}()
	select {
	case <-closed:
		close(stall.release)
		t.Fatal("Close returned while a block fetch was still running")
	case <-time.After(300 * time.Millisecond):
	}
	close(stall.release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s of the fetch going on")
	}
	for range out {
	}
	if _, err := (exchange{ga}).GetBlocks(ctx, []cid.Cid{blk.Cid()}); err == nil {
		t.Fatal("GetBlocks after Close: no error")
	}
	n.stop("a", true)
}

// joinPair joins a and b to the group of the two and returns a's and
// b's.
func joinPair(t *testing.T, a, b *site) (ga, gb *Group) {
	t.Helper()
	ab := []string{a.name, b.name}
	ga, err := a.m.join(context.Background(), ab)
	if err != nil {
		t.Fatal(err)
	}
	if gb, err = b.m.join(context.Background(), ab); err != nil {
		t.Fatal(err)
	}
	return ga, gb
}
