package forward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol carries HTTP requests between agents over libp2p streams.
const Protocol protocol.ID = "/cheops/forward/1.0.0"

// Headers of the forwarding protocol.
const (
	HeaderScope    = "X-Cheops-Scope"
	HeaderResource = "X-Cheops-Resource"
	HeaderSites    = "X-Cheops-Sites"
	HeaderSite     = "X-Cheops-Site"
	// HeaderHop marks a request that another agent sent: it runs on this
	// site only and is never forwarded again (loop prevention).
	HeaderHop = "X-Cheops-Hop"
	// HeaderCoordinate asks a member site to run a create as its
	// coordinator, when the site that received it is outside the scope.
	HeaderCoordinate = "X-Cheops-Coordinate"
)

// sendRemote runs req on another site's agent and returns its answer,
// with the body read (bounded by limit).
func (f *Forwarder) sendRemote(ctx context.Context, site string, req *http.Request, limit int64) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.SiteTimeout)
	defer cancel()
	s, resp, err := f.roundTrip(ctx, site, req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	body, err := readBody(resp, limit)
	resp.Body.Close()
	if err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("site %s: %w", site, err)
	}
	return resp, body, nil
}

// serveStream executes the requests another agent sends on a stream, on
// this site only: one on Protocol, one after another on
// ProtocolKeepAlive until the sender closes the stream or leaves it idle
// for hopServerIdle.
func (f *Forwarder) serveStream(s network.Stream) {
	br := getReader(s) // a large body in large reads
	keep := s.Protocol() == ProtocolKeepAlive
	var wdl bool // a write deadline is set on s
	for first := true; ; first = false {
		if !first {
			if !f.waiters.wait(s) {
				_ = s.Close() // this agent is closing
				putReader(br)
				return
			}
			_ = s.SetReadDeadline(time.Now().Add(hopServerIdle))
			_, err := br.Peek(1)
			f.waiters.done(s)
			if err != nil {
				// The sender closed or dropped the stream, left it idle,
				// or this agent is closing.
				_ = s.Close()
				putReader(br)
				return
			}
		}
		switch f.serveOne(s, br, first, &wdl) {
		case hopAgain:
			if keep {
				continue
			}
			_ = s.Close()
			putReader(br)
		case hopEnded:
			_ = s.Close()
		case hopReset:
			_ = s.Reset()
		}
		return
	}
}

// hopEnd says what is left of a stream after one request.
type hopEnd int

const (
	hopAgain hopEnd = iota // clean: the stream can carry the next request
	hopEnded               // close it; its reader may still be in use
	hopReset               // reset it
)

// serveOne reads one request from s and answers it. wdl says whether a
// write deadline is set on s (by an earlier request on the stream);
// serveOne keeps it up to date.
//
// Each deadline set on a yamux stream stops a timer and starts another
// (time.AfterFunc): the request's head must arrive within SiteTimeout
// (a read deadline), and only an answer that is not a plain hop's is
// bounded by one for writing — a plain hop's answer (a download of any
// size) may take as long as the requester reads it. So a plain hop sets
// one deadline here, not the three it took when both were set before
// the head was read and the write's cleared after (with the wait for
// the next request's, two a request rather than four: ~5 % of the
// receiving agent's CPU per GET went to them in a profile).
func (f *Forwarder) serveOne(s network.Stream, br *bufio.Reader, first bool, wdl *bool) hopEnd {
	remote := s.Conn().RemotePeer()
	site, ok := f.cfg.Membership.SiteOf(remote)
	if !ok {
		f.log.Warn("refused a forwarded request from a peer that is not a member site", "peer", remote)
		return hopReset
	}
	_ = s.SetReadDeadline(time.Now().Add(f.cfg.SiteTimeout))
	req, err := http.ReadRequest(br)
	if err != nil {
		if first || !errors.Is(err, io.EOF) {
			f.log.Warn("malformed forwarded request", "from", site, "err", err)
		}
		return hopReset
	}
	body := &hopBody{ReadCloser: req.Body}
	body.eof.Store(req.Body == http.NoBody)
	req.Body = http.MaxBytesReader(nil, body, f.cfg.MaxBody)
	// The sender is the member site the stream's peer is bound to,
	// whatever its headers say.
	req.Header.Set(HeaderHop, site)
	req.RemoteAddr = site
	if req.Header.Get(headerStream) != "" {
		f.serveStreamed(s, req, br, site)
		return hopEnded
	}
	hw := newHopWriter(s, req.Method)
	// The answer says the stream ends after it when the request's body
	// was not read whole by then: what is left of it is still on the
	// stream (or being read by the application's transport).
	hw.keepAlive = func() bool { return !req.Close && body.eof.Load() }
	if isPlainHop(req) {
		// The request has arrived; its answer may take as long as the
		// requester reads it (an image of any size): the application's
		// timeout bounds the answer until its head, and the requester
		// resets the stream when its client goes away.
		if *wdl {
			_ = s.SetWriteDeadline(time.Time{})
			*wdl = false
		}
		f.serveHop(hw, req.WithContext(context.Background()), site)
	} else {
		_ = s.SetWriteDeadline(time.Now().Add(f.cfg.SiteTimeout))
		*wdl = true
		f.serve(hw, req.WithContext(context.Background()), site)
	}
	if err := hw.finish(); err != nil {
		return hopReset
	}
	// The answer is with the muxer's send loop, which this goroutine
	// has just made runnable, next on this P; left to run on, it would
	// first end the request and wait for the next one (a timer, a lock,
	// a read), ~20–40 µs on a loaded site in an execution trace, before
	// the loop wrote the answer to the connection. Yielding lets the
	// answer leave first.
	runtime.Gosched()
	if hw.closing {
		// A body could still be read by the transport that sent it on:
		// the reader is left to the GC.
		return hopEnded
	}
	return hopAgain
}

// hopBody is a forwarded request's body that knows whether it was read
// to its end; once it was, it never reads the stream again.
type hopBody struct {
	io.ReadCloser
	eof atomic.Bool
}

func (b *hopBody) Read(p []byte) (int, error) {
	if b.eof.Load() {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("answer larger than %d bytes", limit)
	}
	return b, nil
}
