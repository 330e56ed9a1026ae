// Package keptstream keeps, per peer, the libp2p stream of the last
// exchange with it, so that the next exchange runs on it instead of
// opening another. Opening and closing a stream costs a multistream
// negotiation, the resource manager's scopes, yamux's opening and closing
// frames (each a record of the secure channel and a system call at both
// ends) and a handler goroutine at the peer: for the small, frequent
// exchanges between two sites (anti-entropy rounds in crdt, membership
// probes in node) that was most of what they cost.
//
// The side that answers on a kept stream waits for the next exchange for
// a while and then closes it; the side that asks reuses a stream only if
// its last exchange ended within a shorter time (Pool.Take), so that it
// does not pick one the other side is closing. An exchange that fails on
// a kept stream before its first answer may have met that close, and is
// run again on a new stream by the caller.
package keptstream

import (
	"bufio"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Stream is a stream kept between two exchanges with a peer.
type Stream struct {
	S    network.Stream
	R    *bufio.Reader // reads S; what it buffered belongs to the next exchange
	Used time.Time     // the end of its last exchange
}

// Pool holds, per peer, the stream of the last exchange with it while it
// can carry the next. An exchange takes the stream out while it runs, so
// two exchanges with one peer never share a stream. The zero Pool is
// ready to use; its methods are safe for concurrent use.
type Pool struct {
	mu     sync.Mutex
	by     map[peer.ID]Stream
	closed bool
}

// Take returns p's kept stream if its last exchange ended within fresh;
// an older one is closed and not returned.
func (k *Pool) Take(p peer.ID, fresh time.Duration) (Stream, bool) {
	k.mu.Lock()
	s, ok := k.by[p]
	delete(k.by, p)
	k.mu.Unlock()
	if ok && time.Since(s.Used) > fresh {
		_ = s.S.Close()
		return Stream{}, false
	}
	return s, ok
}

// Put keeps s as p's stream for the next exchange, closing the one it
// replaces; once the pool is closed, s is closed at once.
func (k *Pool) Put(p peer.ID, s Stream) {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		_ = s.S.Close()
		return
	}
	if k.by == nil {
		k.by = map[peer.ID]Stream{}
	}
	old, had := k.by[p]
	k.by[p] = s
	k.mu.Unlock()
	if had {
		_ = old.S.Close()
	}
}

// Prune closes the streams whose last exchange ended more than fresh
// ago: a peer no exchange goes to any more does not keep its stream.
// Prune and Drop return without waiting for the streams' Close
// (CloseAside): a loop calls them.
func (k *Pool) Prune(fresh time.Duration) {
	var stale []network.Stream
	k.mu.Lock()
	for p, s := range k.by {
		if time.Since(s.Used) > fresh {
			stale = append(stale, s.S)
			delete(k.by, p)
		}
	}
	k.mu.Unlock()
	for _, s := range stale {
		CloseAside(s)
	}
}

// Drop closes p's kept stream, if any.
func (k *Pool) Drop(p peer.ID) {
	k.mu.Lock()
	s, ok := k.by[p]
	delete(k.by, p)
	k.mu.Unlock()
	if ok {
		CloseAside(s.S)
	}
}

// Len is how many streams are kept.
func (k *Pool) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.by)
}

// Close closes every kept stream, and any put later.
func (k *Pool) Close() {
	k.mu.Lock()
	k.closed = true
	by := k.by
	k.by = nil
	k.mu.Unlock()
	for _, s := range by {
		_ = s.S.Close()
	}
}

// CloseAside closes s on a goroutine of its own. A yamux stream's Close
// queues its FIN on the connection with no deadline: behind a full send
// queue (a peer cut off while other traffic filled it) it waits until the
// connection dies, and a loop that closed it inline would stall with it.
// The goroutine ends when the FIN is queued or the connection closes.
func CloseAside(s network.Stream) {
	go func() { _ = s.Close() }()
}
