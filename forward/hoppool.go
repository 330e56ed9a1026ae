package forward

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Kept-alive hops.
//
// Design note — opening a libp2p stream costs a frame each way to open
// it, the protocol's name, a frame each way to close it and a goroutine
// on the receiving side: on loopback, a read through the hop takes
// about half as long on a kept stream as on a new one (`go test -run
// '^$' -bench Hop ./forward`: 155–177 µs against 341–352 µs, the
// application's own answer included). So, as HTTP/1.1 keeps a
// connection alive, an agent keeps the stream a hop was answered on and
// sends its next hop to that site on it: a stream carries one exchange
// at a time, so concurrent hops still take streams of their own and
// none waits behind another (no head-of-line blocking). A stream goes
// back to the pool only when both its request and its answer were read
// whole; anything else (an error, a client gone, an answer cut short)
// resets it. Streams idle longer than hopIdleTimeout are dropped, and
// the receiving side ends a stream idle for hopServerIdle (longer, so a
// sender never picks a stream the other side is closing).
//
// ProtocolKeepAlive names this: a site that speaks only Protocol answers
// one request per stream, and its streams are never kept.

// ProtocolKeepAlive carries HTTP requests between agents over libp2p
// streams that carry one request after another (HTTP/1.1 keep-alive).
const ProtocolKeepAlive protocol.ID = "/cheops/forward/1.1.0"

const (
	// hopIdleTimeout is how long a sender keeps an idle stream.
	hopIdleTimeout = 30 * time.Second
	// hopServerIdle is how long a receiver waits for the next request
	// on a stream.
	hopServerIdle = 90 * time.Second
	// hopRecheck is how long a stream may idle before a sender reads it
	// to check that it is still open (idleStream.usable).
	hopRecheck = time.Second
	// hopIdlePerPeer bounds the idle streams kept to one site (each
	// holds a 64 KiB reader on both sides: at most 1 MiB a peer).
	hopIdlePerPeer = 16
)

// idleStream is a stream at rest between two exchanges, with the reader
// its answers were read through (it holds nothing: every answer was read
// to its end).
type idleStream struct {
	s     network.Stream
	br    *bufio.Reader
	since time.Time
}

// hopPool keeps, per peer, the streams whose last exchange ended cleanly.
type hopPool struct {
	mu     sync.Mutex
	idle   map[peer.ID][]idleStream
	closed bool
	swept  time.Time // when streams idle too long were last dropped
	// maxIdle replaces hopIdleTimeout when set (tests).
	maxIdle time.Duration
}

func (p *hopPool) idleTimeout() time.Duration {
	if p.maxIdle > 0 {
		return p.maxIdle
	}
	return hopIdleTimeout
}

// get returns the most recently used idle stream to p that is still
// usable, dropping the ones that are not.
func (p *hopPool) get(id peer.ID) (idleStream, bool) {
	for {
		is, ok := p.pop(id)
		if !ok {
			return idleStream{}, false
		}
		if is.usable(time.Now()) {
			return is, true
		}
		_ = is.s.Reset()
		putReader(is.br)
	}
}

// pop takes the most recent idle stream to p, after dropping those idle
// too long.
func (p *hopPool) pop(id peer.ID) (idleStream, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweepLocked(time.Now())
	list := p.dropOldLocked(id, time.Now())
	if len(list) == 0 {
		delete(p.idle, id)
		return idleStream{}, false
	}
	last := list[len(list)-1]
	p.idle[id] = list[:len(list)-1]
	return last, true
}

// usable reports whether an idle stream can carry a request: its
// connection is open, and the other side has neither closed nor reset
// it nor sent anything unasked (a read that cannot wait tells). A
// stream idle for less than hopRecheck is not read: the other side
// ends an idle stream only after hopServerIdle or when its forwarder
// closes, and then cleanly (Close, never Reset), which the exchange
// sees before any answer and sends again (errStaleStream) — the read
// with a deadline cost a third of the sender's hop (BenchmarkHop).
func (is idleStream) usable(now time.Time) bool {
	if is.s.Conn().IsClosed() || is.br.Buffered() > 0 {
		return false
	}
	if now.Sub(is.since) < hopRecheck {
		return true
	}
	if err := is.s.SetReadDeadline(time.Now()); err != nil {
		return false
	}
	_, err := is.br.Peek(1)
	_ = is.s.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dropOldLocked drops the streams to id idle longer than hopIdleTimeout
// and returns the others, oldest first.
func (p *hopPool) dropOldLocked(id peer.ID, now time.Time) []idleStream {
	list := p.idle[id]
	cut := 0
	for cut < len(list) && now.Sub(list[cut].since) > p.idleTimeout() {
		_ = list[cut].s.Reset()
		putReader(list[cut].br)
		cut++
	}
	list = list[cut:]
	if len(list) == 0 {
		delete(p.idle, id)
	} else {
		p.idle[id] = list
	}
	return list
}

// sweepLocked drops, at most once per hopIdleTimeout, the streams idle
// too long to every peer: those to a site no longer asked would
// otherwise stay until this agent stops.
func (p *hopPool) sweepLocked(now time.Time) {
	if now.Sub(p.swept) < p.idleTimeout() {
		return
	}
	p.swept = now
	for id := range p.idle {
		p.dropOldLocked(id, now)
	}
}

// put keeps a stream whose exchange ended cleanly, or closes it when
// the pool is full or closed.
func (p *hopPool) put(id peer.ID, is idleStream) {
	p.mu.Lock()
	if p.closed || len(p.idle[id]) >= hopIdlePerPeer {
		p.mu.Unlock()
		_ = is.s.Close()
		putReader(is.br)
		return
	}
	if p.idle == nil {
		p.idle = map[peer.ID][]idleStream{}
	}
	is.since = time.Now()
	p.sweepLocked(is.since)
	p.idle[id] = append(p.idle[id], is)
	p.mu.Unlock()
}

// close resets every idle stream; later puts close theirs.
func (p *hopPool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, list := range idle {
		for _, is := range list {
			_ = is.s.Reset()
			putReader(is.br)
		}
	}
}

// exchange is one request-answer on a stream, from roundTrip. Close it
// when done with the answer: the stream goes back to the pool if the
// answer was read to its end, and is closed otherwise; Reset abandons
// it.
type exchange struct {
	s    network.Stream
	br   *bufio.Reader
	peer peer.ID
	pool *hopPool
	body *trackedBody
	keep bool // the stream may carry another exchange
	// deadline: the stream still has the deadlines exchangeOn set (a
	// request whose context had one), to clear before it is kept.
	deadline bool
	stop     func() bool
	once     sync.Once
}

// Close ends the exchange: its stream is kept for the next one when its
// answer was read whole, and closed otherwise.
func (e *exchange) Close() error {
	var err error
	e.once.Do(func() {
		stopped := e.stop()
		if e.keep && stopped && e.body.done() && e.pool != nil {
			if e.deadline {
				_ = e.s.SetDeadline(time.Time{})
			}
			e.pool.put(e.peer, idleStream{s: e.s, br: e.br})
			return
		}
		if !e.body.done() {
			// Closing an answer's body not read to its end would read
			// the rest: abandon the stream instead.
			err = e.s.Reset()
		} else {
			err = e.s.Close()
		}
		putReader(e.br)
	})
	return err
}

// Reset abandons the exchange and its stream.
func (e *exchange) Reset() error {
	var err error
	e.once.Do(func() {
		e.stop()
		err = e.s.Reset()
		putReader(e.br)
	})
	return err
}

// trackedBody is an answer's body that knows whether it was read to its
// end.
type trackedBody struct {
	io.ReadCloser
	eof bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close closes a body read to its end; one that was not is left as it
// is (closing it would read the rest): its exchange resets the stream.
func (b *trackedBody) Close() error {
	if !b.eof {
		return nil
	}
	return b.ReadCloser.Close()
}

func (b *trackedBody) done() bool { return b.eof }

func trackBody(resp *http.Response) *trackedBody {
	t := &trackedBody{ReadCloser: resp.Body, eof: resp.Body == http.NoBody}
	resp.Body = t
	return t
}

// hopWaiters are the streams a receiver waits on for their next request;
// closing it resets them, and a stream that would wait after is closed.
type hopWaiters struct {
	mu      sync.Mutex
	waiting map[network.Stream]struct{}
	closed  bool
}

// wait marks s as waiting; false when the receiver is closing.
func (w *hopWaiters) wait(s network.Stream) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if w.waiting == nil {
		w.waiting = map[network.Stream]struct{}{}
	}
	w.waiting[s] = struct{}{}
	return true
}

// done marks s as serving a request again.
func (w *hopWaiters) done(s network.Stream) {
	w.mu.Lock()
	delete(w.waiting, s)
	w.mu.Unlock()
}

// close closes the streams waiting (the other side reads their end
// before any answer, and sends its request again on a new stream) and
// refuses later waits.
func (w *hopWaiters) close() {
	w.mu.Lock()
	waiting := w.waiting
	w.waiting, w.closed = nil, true
	w.mu.Unlock()
	for s := range waiting {
		_ = s.Close()
	}
}
