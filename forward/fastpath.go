package forward

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"cheops/catalog"
)

// The fast path: plain local reads served on a connection loop of the
// agent's own, in front of net/http's server.
//
// Design note — why a second HTTP/1.1 server, and why it stays small.
// The local hop's target (issue 17: added p50 within 1.2× HAProxy's) is
// out of reach of net/http's server on two shared cores: per request it
// starts a background read on the connection (a goroutine woken and
// aborted by a deadline in the past when the handler ends), makes a
// context and a response writer, and the bench measured a bare
// http.Server proxy at 1.0–1.6× HAProxy's added latency against 1.1–1.3×
// for a goroutine per connection with the standard library's parsers.
// So the agent's listener is served here first: one goroutine per
// connection reads each request with http.ReadRequest (no parsing of our
// own) and serves on that goroutine the one kind of request the hop is
// about — a plain read of one site's application (fastRead: GET or
// HEAD, HTTP/1.1, no body framing, no Upgrade, Expect or Connection
// other than keep-alive, a valid Host, the API's token, a scope and a
// catalog that place it on one site only: this one, or another read
// over the hop, where the entry site paid net/http's server the same
// way; a remote read that fails falls back and answers as the handler
// does, on this path). Everything
// else — the first request that is not such a read, a request the
// parser refuses, a head over the size limit — hands the connection
// over to net/http's server for the rest of its life, with the bytes
// read so far replayed first (handoffConn): every other feature, and
// every error answer (cheops JSON through ErrorListener), keeps
// net/http's behaviour unchanged. A fast read's answer is written by
// fastWriter with net/http's rules for an answer's head (Date, an
// automatic Content-Length or chunking, Content-Type sniffing, the
// header order), so that the same request gets the same answer on
// either path.

// FastConfig describes the fast path in front of the agent's API.
type FastConfig struct {
	// Forwarder serves the reads taken on the fast path.
	Forwarder *Forwarder
	// Take reports whether the API would hand r to the forwarder as
	// it is, with the client's rights: the router's choice of route and
	// the token check. A request it refuses goes to net/http's server.
	Take func(r *http.Request) bool
	// ReadHeaderTimeout bounds the reading of a request's head, and
	// IdleTimeout the wait for the next request, as http.Server's
	// fields of the same names (the API's: 10 s and 2 min).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// MaxHeaderBytes bounds a request's head as http.Server's field
	// (http.DefaultMaxHeaderBytes, 1 MiB, when 0); past it the
	// connection goes to net/http's server, which answers 431.
	MaxHeaderBytes int
	Logger         *slog.Logger
}

// FastPath accepts the API's connections and serves plain local reads
// itself. It is a net.Listener: its Accept returns the connections
// handed over to net/http's server (wrapped as ErrorListener does), for
// http.Server.Serve.
type FastPath struct {
	cfg  FastConfig
	ln   net.Listener
	log  *slog.Logger
	ctx  context.Context // requests' context; ends when Shutdown gives up waiting
	stop context.CancelFunc

	handed chan net.Conn // connections for net/http's server
	failed chan error    // the accept loop's error, for Accept
	done   chan struct{} // closed by Close
	once   sync.Once
	wg     sync.WaitGroup // the accept loop and every connection's goroutine

	mu    sync.Mutex
	conns map[*fastConn]bool // value: idle (waiting for a request)

	served atomic.Int64
}

// Served is the number of reads served on the fast path so far.
func (p *FastPath) Served() int64 { return p.served.Load() }

// ServeFast starts serving ln: connections are accepted and read here;
// those handed over come out of the returned listener's Accept.
func ServeFast(ln net.Listener, cfg FastConfig) *FastPath {
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &FastPath{cfg: cfg, ln: ln, log: cfg.Logger.With("component", "fastpath"),
		handed: make(chan net.Conn), failed: make(chan error, 1), done: make(chan struct{}), conns: map[*fastConn]bool{}}
	p.ctx, p.stop = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.acceptLoop()
	return p
}

func (p *FastPath) acceptLoop() {
	defer p.wg.Done()
	var delay time.Duration
	for {
		c, err := p.ln.Accept()
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if temporary(err) {
				// As http.Server does: wait, longer each time, up to 1 s.
				// (Running out of file descriptors is temporary; it must
				// not stop the API.)
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else if delay *= 2; delay > time.Second {
					delay = time.Second
				}
				p.log.Warn("accept failed; retrying", "err", err, "in", delay)
				select {
				case <-p.done:
					return
				case <-time.After(delay):
				}
				continue
			}
			p.failed <- err
			return
		}
		delay = 0
		fc := &fastConn{p: p, c: c}
		p.mu.Lock()
		if p.closed() {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[fc] = true
		p.wg.Add(1)
		p.mu.Unlock()
		go fc.serve()
	}
}

// temporary reports an accept error worth retrying: a timeout, or one
// the system reports as temporary (EMFILE, ENFILE, ECONNABORTED...), as
// net/http's server judges them.
func temporary(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) && t.Temporary() {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (p *FastPath) closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Accept returns the next connection handed over to net/http's server.
func (p *FastPath) Accept() (net.Conn, error) {
	select {
	case c := <-p.handed:
		return c, nil
	case err := <-p.failed:
		p.failed <- err
		return nil, err
	case <-p.done:
		return nil, net.ErrClosed
	}
}

// Addr is the API's address.
func (p *FastPath) Addr() net.Addr { return p.ln.Addr() }

// Close stops accepting and closes the connections waiting for a
// request; one serving a request closes when its answer is written.
// Shutdown waits for them. (http.Server.Shutdown calls Close.)
func (p *FastPath) Close() error {
	var err error
	p.once.Do(func() {
		close(p.done)
		err = p.ln.Close()
		p.mu.Lock()
		for fc, idle := range p.conns {
			if idle {
				fc.c.Close()
			}
		}
		p.mu.Unlock()
	})
	return err
}

// Shutdown closes the fast path and waits for its goroutines; when ctx
// ends first, the connections still serving are closed and their
// requests' context cancelled.
func (p *FastPath) Shutdown(ctx context.Context) error {
	p.Close()
	waited := make(chan struct{})
	go func() { p.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
	}
	p.stop()
	p.mu.Lock()
	for fc := range p.conns {
		fc.c.Close()
	}
	p.mu.Unlock()
	<-waited
	return ctx.Err()
}

// setIdle records whether fc waits for a request; it reports false
// when the fast path is closing and fc must end.
func (p *FastPath) setIdle(fc *fastConn, idle bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed() {
		return false
	}
	p.conns[fc] = idle
	return true
}

func (p *FastPath) forget(fc *fastConn) {
	p.mu.Lock()
	delete(p.conns, fc)
	p.mu.Unlock()
}

// hand gives c to net/http's server; it reports false (c closed) when
// the fast path is closing.
func (p *FastPath) hand(c net.Conn) bool {
	select {
	case p.handed <- &errorConn{Conn: c}:
		return true
	case <-p.done:
		c.Close()
		return false
	}
}

// fastConn is one client connection read by the fast path.
type fastConn struct {
	p   *FastPath
	c   net.Conn
	rec recorder
	br  *bufio.Reader
	bw  *bufio.Writer
	w   fastWriter
}

// fastBufs are the connections' buffers: 4 KiB each way, as net/http's.
var (
	fastReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	fastWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// errHeadTooLarge ends the reading of a head past the limit: the
// connection goes to net/http's server, which answers 431.
var errHeadTooLarge = errors.New("request head too large")

// recorder reads the connection and keeps what it read since the
// start of the current request (with what the buffer held then), to be
// replayed to net/http's server when the request is handed over.
type recorder struct {
	c     net.Conn
	rec   []byte
	n     int // bytes read from c for the current request
	limit int
}

func (r *recorder) Read(p []byte) (int, error) {
	if r.n >= r.limit {
		return 0, errHeadTooLarge
	}
	if len(p) > r.limit-r.n {
		p = p[:r.limit-r.n]
	}
	n, err := r.c.Read(p)
	r.rec = append(r.rec, p[:n]...)
	r.n += n
	return n, err
}

// maxKeptRecord is the largest record buffer a connection keeps between
// requests: one request with a 1 MiB head must not leave 1 MiB held by
// an idle keep-alive connection for its 2 minutes.
const maxKeptRecord = 16 << 10

// start begins a request whose first bytes the buffer holds already.
func (r *recorder) start(br *bufio.Reader) {
	held, _ := br.Peek(br.Buffered())
	if cap(r.rec) > maxKeptRecord {
		r.rec = nil // a large head's buffer is not kept for the connection's life
	}
	r.rec = append(r.rec[:0], held...)
	r.n = 0
}

func (fc *fastConn) serve() {
	p := fc.p
	handed := false
	defer func() {
		if v := recover(); v != nil {
			p.log.Error("panic serving a connection", "remote", fc.c.RemoteAddr(), "panic", v, "stack", string(debug.Stack()))
		}
		if !handed {
			fc.c.Close()
		}
		p.forget(fc)
		if fc.br != nil {
			fc.br.Reset(nil)
			fastReaders.Put(fc.br)
			fc.bw.Reset(nil)
			fastWriters.Put(fc.bw)
		}
		p.wg.Done()
	}()
	fc.rec = recorder{c: fc.c, limit: p.cfg.MaxHeaderBytes + 4096} // as net/http's read limit
	fc.br = fastReaders.Get().(*bufio.Reader)
	fc.br.Reset(&fc.rec)
	fc.bw = fastWriters.Get().(*bufio.Writer)
	fc.bw.Reset(fc.c)
	remote := fc.c.RemoteAddr().String()
	for first := true; ; first = false {
		fc.rec.start(fc.br)
		if !first && fc.br.Buffered() == 0 {
			// Between two requests: the idle timeout, then the head's.
			if p.cfg.IdleTimeout > 0 {
				_ = fc.c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
			}
			if _, err := fc.br.Peek(1); err != nil {
				return
			}
		}
		if p.cfg.ReadHeaderTimeout > 0 {
			_ = fc.c.SetReadDeadline(time.Now().Add(p.cfg.ReadHeaderTimeout))
		}
		r, err := http.ReadRequest(fc.br)
		if err != nil {
			var ne net.Error
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && ne.Timeout()) {
				return // as net/http: a closed or silent client gets no answer
			}
			// Malformed or too large: net/http's server reads it again
			// and answers as it does.
			handed = fc.handOver(nil)
			return
		}
		head := fc.rec.rec[:len(fc.rec.rec)-fc.br.Buffered()] // this request's bytes
		if !fastCandidate(r, head) || !p.setIdle(fc, false) {
			handed = fc.handOver(nil)
			return
		}
		delete(r.Header, "Host") // as net/http's server
		r.RemoteAddr = remote
		r = r.WithContext(p.ctx)
		if p.cfg.Take != nil && !p.cfg.Take(r) {
			handed = fc.handOver(nil)
			return
		}
		fc.w.reset(fc.bw, fc.c, r)
		served, hereErr := p.cfg.Forwarder.fastRead(&fc.w, r)
		if !served {
			if fc.w.headSent || fc.w.bodyBuf.Buffered() > 0 {
				return // cannot happen: fastRead writes nothing when it declines
			}
			handed = fc.handOver(hereErr)
			return
		}
		p.served.Add(1)
		keep := fc.w.finish()
		if err := fc.bw.Flush(); err != nil || !keep || !p.setIdle(fc, true) {
			return
		}
	}
}

// handOver gives the connection to net/http's server with what was
// read of the current request replayed first. hereErr, when set, is how
// this site's application failed that request (see ConnContext).
func (fc *fastConn) handOver(hereErr error) bool {
	_ = fc.c.SetDeadline(time.Time{})
	replay := append([]byte(nil), fc.rec.rec...)
	return fc.p.hand(&handoffConn{Conn: fc.c, replay: replay, hereErr: hereErr})
}

// ConnContext is for http.Server.ConnContext: a connection the fast path
// handed over after this site's application failed the read it carries
// tells the handler so (takeHereFailure), which then starts from its
// fallback instead of asking the application again — a hung application
// would otherwise cost the client SiteTimeout twice.
func (p *FastPath) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if ec, ok := c.(*errorConn); ok {
		if hc, ok := ec.Conn.(*handoffConn); ok && hc.hereErr != nil {
			return context.WithValue(ctx, hereFailureKey{}, &hereFailure{err: hc.hereErr})
		}
	}
	return ctx
}

// hereFailure is how this site's application failed the read a handed
// connection replays; the first request served on the connection takes it.
type hereFailure struct {
	mu  sync.Mutex
	err error
}

type hereFailureKey struct{}

// takeHereFailure returns, once per connection, the failure ConnContext
// noted: the first request the handler serves on a handed connection is
// the one the fast path failed to serve (replayed).
func takeHereFailure(ctx context.Context) error {
	h, _ := ctx.Value(hereFailureKey{}).(*hereFailure)
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.err
	h.err = nil
	return err
}

// fastCandidate reports a request the fast path may serve, by its head
// alone: GET or HEAD in HTTP/1.1 in origin form, without body framing
// (no Transfer-Encoding, no Content-Length but 0), Upgrade, Expect or a
// Connection other than keep-alive, with the one valid Host and header
// fields net/http's server requires (it answers 400 to the others).
//
// head is the request's bytes as read: http.ReadRequest keeps only the
// first Host header, and net/http's server refuses a request with two,
// so a head with more than one line starting "Host:" is not taken.
func fastCandidate(r *http.Request, head []byte) bool {
	if hostLines(head) != 1 {
		return false
	}
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Close ||
		r.ContentLength != 0 || len(r.TransferEncoding) > 0 || r.Body != http.NoBody || !strings.HasPrefix(r.RequestURI, "/") {
		return false
	}
	for _, k := range []string{"Transfer-Encoding", "Upgrade", "Expect", "Trailer", "Te"} {
		if _, ok := r.Header[k]; ok {
			return false
		}
	}
	if cl, ok := r.Header["Content-Length"]; ok && (len(cl) != 1 || cl[0] != "0") {
		return false
	}
	if c, ok := r.Header["Connection"]; ok && (len(c) != 1 || !strings.EqualFold(c[0], "keep-alive")) {
		return false
	}
	if r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		return false
	}
	for k, vs := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// hostLines counts the lines of head that start with "Host:", in any case.
func hostLines(head []byte) int {
	n := 0
	for i := 0; i < len(head); i++ {
		if (i == 0 || head[i-1] == '\n') && len(head)-i >= 5 && strings.EqualFold(string(head[i:i+5]), "host:") {
			n++
		}
	}
	return n
}

// fastRead serves r, a fastCandidate the API routes to the forwarder,
// when it is a plain read of one site: a default service's path (no
// client-named routes, no stream) that names no resource by its global
// id, whose scope places it on one site (one site to read). It is
// served as plain serves such a read: on this site by readHere, on
// another by plain itself (readThere, and the fallback when that site
// fails). It reports false, having written nothing, for any other
// request, or when this site's application could not be reached (the
// caller hands it to the handler, which falls back as it does; hereErr
// is then the application's failure, for the handler not to try it
// again).
func (f *Forwarder) fastRead(w http.ResponseWriter, r *http.Request) (served bool, hereErr error) {
	if status, _, _ := checkClient(r); status != 0 {
		return false, nil
	}
	req, _, _, err := f.parse(w, r, "")
	if err != nil || req.svc.Routes != nil || req.body != nil || req.stream != nil {
		return false, nil
	}
	if req.route.id != "" && !req.route.named && catalog.ValidID(req.route.id) {
		return false, nil // a resource: read from its holders (serve, onResource)
	}
	plan, err := f.plan(req)
	if err != nil {
		return false, nil
	}
	order := plan.ReadOrder()
	if len(order) != 1 {
		return false, nil
	}
	if r.Method == http.MethodGet && req.route.id == "" && len(plan.Required()) > 1 && !req.route.other {
		return false, nil // crossRead
	}
	if _, refused := localIDRefusal(req, plan.Required()); refused {
		return false, nil
	}
	if order[0] != f.cfg.Membership.Site() {
		// One other site to read: run as the handler runs it (serve,
		// dispatch, plain — which it would reach with this plan), its
		// falling back and error answers included, so that a site that
		// fails is not asked twice.
		f.plain(w, req, plan)
		return true, nil
	}
	if err := f.readHere(w, req, req.rawPath); err != nil {
		return false, err
	}
	return true, nil
}

// handoffConn is a connection handed over to net/http's server: it
// reads first the bytes the fast path read already (replay), then the
// connection.
type handoffConn struct {
	net.Conn
	replay  []byte
	hereErr error // this site's application failed the replayed read
}

func (c *handoffConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn is the connection under it once the replayed bytes are read
// (a handler that reads the TCP connection itself, spliceUpload, must
// not skip them); until then, itself.
func (c *handoffConn) NetConn() net.Conn {
	if len(c.replay) > 0 {
		return c
	}
	return c.Conn
}

// ReadFrom lets an answer's body move in the kernel (see errorConn).
func (c *handoffConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite half-closes the connection, as net/http's server does
// before closing one it refused a request on.
func (c *handoffConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
