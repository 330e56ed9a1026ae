package forward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/catalog"
	"cheops/errcode"
)

// The remote hop.
//
// Design note — a hop costs one round trip and no more work than a local
// read. A request another site sends arrives on a libp2p stream of its
// own (one per request: yamux multiplexes them on the connection, so a
// slow answer holds up no other request), opened without a round trip
// of its own (go-libp2p selects the protocol optimistically once
// identify has told it the peer speaks it) and written in one buffered
// flush. The site that receives it runs it on its application only
// (serveHop): the sender placed it, checked it and sent the scope in
// canonical form, so nothing is parsed or planned again. The answer goes
// back in one flush for a small body, in chunks as it arrives for a large
// or streamed one (hopWriter), and the sender passes a read's answer to
// its client as it arrives (readThere).

// hopWriter is an http.ResponseWriter writing an HTTP/1.1 answer onto a
// libp2p stream through a buffer: the head and a small body leave in one
// write (one yamux frame) when finish flushes. A body of known length
// (Content-Length) is sent as it is; any other is chunked. Flush sends
// what is buffered (a watch's events).
type hopWriter struct {
	s       io.Writer
	bw      *bufio.Writer
	header  http.Header
	head    bool // the request was a HEAD: no body follows
	started bool
	chunked bool
	noBody  bool
	err     error
	// keepAlive, when set, says at the answer's head whether the stream
	// can carry another request; when it cannot, the head says
	// "Connection: close" and closing is set.
	keepAlive func() bool
	closing   bool
}

// A body crosses the stream in writes and reads of up to 64 KiB (yamux
// frames); the buffers are pooled, not made for each request.
var (
	hopBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}
	hopReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}
)

// hopDirect is the smallest write of a body of known length that
// hopWriter sends to the stream without copying it into its buffer.
const hopDirect = 16 << 10

func getReader(r io.Reader) *bufio.Reader {
	br := hopReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	hopReaders.Put(br)
}

func newHopWriter(s io.Writer, method string) *hopWriter {
	bw := hopBuffers.Get().(*bufio.Writer)
	bw.Reset(s)
	return &hopWriter{s: s, bw: bw, header: http.Header{}, head: method == http.MethodHead}
}

func (w *hopWriter) Header() http.Header { return w.header }

func (w *hopWriter) WriteHeader(status int) {
	if w.started {
		return
	}
	w.started = true
	w.noBody = w.head || status == http.StatusNoContent || status == http.StatusNotModified || status < 200
	w.header.Del("Transfer-Encoding")
	w.header.Del("Connection")
	if w.keepAlive != nil && !w.keepAlive() {
		w.closing = true
		w.header.Set("Connection", "close")
	}
	if !w.noBody && w.header.Get("Content-Length") == "" {
		w.chunked = true
		w.header.Set("Transfer-Encoding", "chunked")
	}
	w.bw.WriteString("HTTP/1.1 ")
	w.bw.WriteString(strconv.Itoa(status))
	w.bw.WriteByte(' ')
	w.bw.WriteString(http.StatusText(status))
	w.bw.WriteString("\r\n")
	_ = w.header.Write(w.bw)
	_, w.err = w.bw.WriteString("\r\n")
}

func (w *hopWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		return len(p), nil
	}
	if !w.chunked && len(p) >= hopDirect {
		// A large write of a body of known length goes to the stream
		// as it is, after what is buffered (the head): copying it into
		// the buffer first would cost a copy of every byte.
		if w.err = w.bw.Flush(); w.err != nil {
			return 0, w.err
		}
		n, err := w.s.Write(p)
		w.err = err
		return n, err
	}
	if w.chunked && len(p) > 0 {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
	}
	n, err := w.bw.Write(p)
	if w.chunked && err == nil && len(p) > 0 {
		_, err = w.bw.WriteString("\r\n")
	}
	w.err = err
	return n, err
}

// Flush sends what is buffered.
func (w *hopWriter) Flush() {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil {
		w.err = w.bw.Flush()
	}
}

// finish ends the answer and sends it; the writer is unusable after.
func (w *hopWriter) finish() error {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil && w.chunked {
		_, w.err = w.bw.WriteString("0\r\n\r\n")
	}
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	w.bw.Reset(nil)
	hopBuffers.Put(w.bw)
	w.bw = nil
	return w.err
}

// isPlainHop reports a request from another site that runs on this
// site's application only: neither an operation of a replicated write
// nor a create to coordinate.
func isPlainHop(r *http.Request) bool {
	return r.Header.Get(HeaderOp) == "" && r.Header.Get(HeaderCoordinate) == ""
}

// serveHop runs a plain hop (isPlainHop) on this site's application.
// Only what running it needs is read: its service, its route and its
// body; the scope is passed on as the sender gave it (canonical).
func (f *Forwarder) serveHop(w http.ResponseWriter, r *http.Request, site string) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/svc/")
	name, inner, _ := strings.Cut(rest, "/")
	svc, known := f.services[name]
	if !ok || !known {
		errcode.Write(w, http.StatusNotFound, "unknown_service", fmt.Sprintf("unknown service %q (this agent serves %s)", name, f.serviceNames()))
		return
	}
	unescaped, err := url.PathUnescape(inner)
	if err != nil {
		errcode.Write(w, http.StatusBadRequest, "bad_path", fmt.Sprintf("path: %v", err))
		return
	}
	req := &request{r: r, svc: svc, hop: site, route: svc.routeOf(unescaped), rawPath: "/" + inner, canon: r.Header.Get(HeaderScope)}
	if r.URL.RawQuery != "" {
		req.rawPath += "?" + r.URL.RawQuery
	}
	if req.canon == "" {
		errcode.Write(w, http.StatusBadRequest, "bad_scope", "a forwarded request carries no scope")
		return
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && streamsBody(req) {
		req.stream = r.Body // bounded by serveStream's MaxBytesReader
	} else if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if req.body, err = readLimited(r.Body, f.cfg.MaxBody); err != nil {
			errcode.Write(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over the limit of %d bytes", f.cfg.MaxBody))
			return
		}
	}
	if f.streams(req) {
		f.streamLocal(w, req)
		return
	}
	f.serveLocal(w, req)
}

// readThere runs a read of path (inside the service, with its query) on
// another site and passes its answer to the client as it arrives. It
// returns an error, having written nothing, when the site could not be
// reached, did not answer, or answered that its application could not
// be reached (HeaderOutcome pending); the request may then be tried
// elsewhere (a read is harmless to repeat).
func (f *Forwarder) readThere(w http.ResponseWriter, req *request, site, path string) error {
	ctx := req.r.Context()
	out, err := http.NewRequestWithContext(ctx, req.r.Method, "http://cheops/svc/"+req.svc.Name+path, http.NoBody)
	if err != nil {
		return err
	}
	for k, v := range req.r.Header {
		if !hopByHopSet[k] {
			out.Header[k] = v
		}
	}
	out.Header.Del(HeaderCoordinate)
	out.Header.Set(HeaderScope, req.scopeText())
	out.Header.Set(HeaderHop, f.cfg.Membership.Site())
	if failed := req.failedSites(); len(failed) > 0 {
		out.Header.Set(HeaderAvoid, strings.Join(failed, ","))
	}
	s, resp, err := f.roundTrip(ctx, site, out)
	if err != nil {
		return err
	}
	defer s.Close()
	defer resp.Body.Close()
	if resp.Header.Get(HeaderOutcome) == catalog.OutcomePending {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("site %s: %s", site, strings.TrimSpace(string(msg)))
	}
	resp.Header.Del(HeaderOutcome)
	resp.Header.Del(HeaderLocalID)
	h := w.Header()
	for k, v := range resp.Header {
		if !hopByHopSet[k] {
			h[k] = v
		}
	}
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	if req.r.Method != http.MethodHead {
		if err := copyBody(w, resp.Body); err != nil {
			s.Reset()
			f.log.Debug("read from another site cut short", "site", site, "err", err)
			return nil
		}
	}
	if fl, ok := w.(http.Flusher); ok && resp.ContentLength >= 0 {
		// The whole answer, of a length its head says: sent to the
		// client now, before the exchange is closed and its stream
		// kept (a flush of a chunked answer would cost a second write
		// for its end).
		fl.Flush()
	}
	return nil
}

// roundTrip sends req to another site's agent and returns the exchange
// and the answer's head; the body is read from the stream as it arrives
// (close the exchange after). The request goes on a stream kept from an
// earlier exchange with that site when one is idle (hoppool.go), else on
// a new one; a kept stream the other side closed before reading it (its
// agent stopping, or the stream idle too long) sends it again on a new
// one. The stream is reset when ctx ends. The request and the answer's
// head must arrive by ctx's deadline, or within SiteTimeout when it has
// none — a body after that may take as long as the client waits for it
// (a large download).
func (f *Forwarder) roundTrip(ctx context.Context, site string, req *http.Request) (*exchange, *http.Response, error) {
	p, ok := f.cfg.Membership.PeerOf(site)
	if !ok {
		return nil, nil, fmt.Errorf("site %s: no peer known: %w", site, errNotDelivered)
	}
	dl, bounded := ctx.Deadline()
	if !bounded {
		dl = time.Now().Add(f.cfg.SiteTimeout)
	}
	if idle, ok := f.hops.get(p); ok {
		x, resp, err := f.exchangeOn(ctx, site, p, idle.s, idle.br, req, dl, bounded)
		if !errors.Is(err, errStaleStream) {
			return x, resp, err
		}
		if req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				return nil, nil, fmt.Errorf("site %s: a kept stream was closed and the request's body cannot be sent again: %w", site, errNotDelivered)
			}
			body, err := req.GetBody()
			if err != nil {
				return nil, nil, fmt.Errorf("site %s: send again: %w", site, err)
			}
			req.Body = body
		}
	}
	openCtx, cancel := context.WithDeadline(ctx, dl)
	s, err := f.cfg.Host.NewStream(openCtx, p, ProtocolKeepAlive, Protocol)
	cancel()
	if err != nil {
		// Nothing was sent: the request did not run there.
		return nil, nil, fmt.Errorf("site %s: no stream: %w (%w)", site, errNotDelivered, err)
	}
	return f.exchangeOn(ctx, site, p, s, getReader(s), req, dl, bounded)
}

// errStaleStream is a kept stream that ended before its answer began:
// the other side closed it while it was idle, before the request
// arrived (a receiver closes a stream only between two requests). A
// stream whose receiver died ends in an error, not in this clean end.
// Sending the request again is sending it for the first time: a create
// marked fresh (wireOp.Fresh) stays fresh.
var errStaleStream = errors.New("kept stream closed by the other side")

// exchangeOn sends req on s and reads the answer's head through br.
func (f *Forwarder) exchangeOn(ctx context.Context, site string, p peer.ID, s network.Stream, br *bufio.Reader, req *http.Request, dl time.Time, bounded bool) (*exchange, *http.Response, error) {
	keep := s.Protocol() == ProtocolKeepAlive
	_ = s.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	fail := func(err error) (*exchange, *http.Response, error) {
		stop()
		s.Reset()
		putReader(br)
		return nil, nil, err
	}
	bw := hopBuffers.Get().(*bufio.Writer) // a large body in frames of 64 KiB
	bw.Reset(s)
	err := writeReadHead(bw, req) // Request.Write for any request with a body
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	hopBuffers.Put(bw)
	if err != nil {
		return fail(fmt.Errorf("site %s: send: %w", site, err))
	}
	if !keep {
		_ = s.CloseWrite()
	}
	if _, err := br.Peek(1); err == io.EOF && keep && ctx.Err() == nil {
		// Not one byte of an answer, and a clean end: see errStaleStream.
		return fail(fmt.Errorf("site %s: %w", site, errStaleStream))
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return fail(fmt.Errorf("site %s: read answer: %w", site, err))
	}
	if !bounded {
		_ = s.SetDeadline(time.Time{})
	}
	x := &exchange{s: s, br: br, peer: p, pool: &f.hops, body: trackBody(resp), keep: keep && !resp.Close, deadline: bounded, stop: stop}
	return x, resp, nil
}
