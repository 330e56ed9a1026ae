package keptstream

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// stuckStream is a stream whose Close blocks until released, as a yamux
// stream's does behind a full send queue.
type stuckStream struct {
	network.Stream
	release chan struct{}
	closed  atomic.Bool
}

func (s *stuckStream) Close() error {
	<-s.release
	s.closed.Store(true)
	return nil
}

// closedStream records its Close.
type closedStream struct {
	network.Stream
	closed atomic.Bool
}

func (s *closedStream) Close() error {
	s.closed.Store(true)
	return nil
}

// TestPruneAndDropCloseAside: pruning or dropping a kept stream whose
// Close blocks returns at once (loops call both), and the stream is still
// closed once its Close can proceed.
func TestPruneAndDropCloseAside(t *testing.T) {
	var k Pool
	pruned := &stuckStream{release: make(chan struct{})}
	dropped := &stuckStream{release: make(chan struct{})}
	k.Put("pruned", Stream{S: pruned, Used: time.Now().Add(-time.Hour)})
	k.Put("dropped", Stream{S: dropped, Used: time.Now()})
	returned := make(chan struct{})
	go func() {
		k.Prune(time.Minute)
		k.Drop("dropped")
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		close(pruned.release)
		close(dropped.release)
		t.Fatal("Prune and Drop wait for a stream's Close")
	}
	close(pruned.release)
	close(dropped.release)
	deadline := time.Now().Add(10 * time.Second)
	for !pruned.closed.Load() || !dropped.closed.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("streams not closed: pruned %v, dropped %v", pruned.closed.Load(), dropped.closed.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if n := k.Len(); n != 0 {
		t.Fatalf("%d streams still kept", n)
	}
}

// TestTakeFreshOnly: a stream is taken out (a second Take finds none),
// and one whose last exchange is older than asked for is closed instead
// of returned.
func TestTakeFreshOnly(t *testing.T) {
	var k Pool
	fresh, stale := &closedStream{}, &closedStream{}
	k.Put("fresh", Stream{S: fresh, Used: time.Now()})
	k.Put("stale", Stream{S: stale, Used: time.Now().Add(-time.Hour)})
	if s, ok := k.Take("fresh", time.Minute); !ok || s.S != fresh {
		t.Fatalf("Take(fresh) = %v, %v", s.S, ok)
	}
	if _, ok := k.Take("fresh", time.Minute); ok {
		t.Fatal("a stream taken out was taken again")
	}
	if _, ok := k.Take("stale", time.Minute); ok {
		t.Fatal("a stale stream was returned")
	}
	if !stale.closed.Load() || fresh.closed.Load() {
		t.Fatalf("closed: stale %v (want true), fresh %v (want false)", stale.closed.Load(), fresh.closed.Load())
	}
}

// TestPutReplacesAndCloseEnds: a second Put for a peer closes the stream
// it replaces; Close closes what is kept and anything put after it.
func TestPutReplacesAndCloseEnds(t *testing.T) {
	var k Pool
	first, second, late := &closedStream{}, &closedStream{}, &closedStream{}
	k.Put("p", Stream{S: first, Used: time.Now()})
	k.Put("p", Stream{S: second, Used: time.Now()})
	if !first.closed.Load() || second.closed.Load() {
		t.Fatalf("after the second Put: first closed %v (want true), second %v (want false)", first.closed.Load(), second.closed.Load())
	}
	k.Close()
	k.Put("q", Stream{S: late, Used: time.Now()})
	if !second.closed.Load() || !late.closed.Load() || k.Len() != 0 {
		t.Fatalf("after Close: second closed %v, late closed %v, %d kept", second.closed.Load(), late.closed.Load(), k.Len())
	}
}
