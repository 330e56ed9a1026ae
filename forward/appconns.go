package forward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// appConns is a pool of keep-alive HTTP/1.1 connections to one
// application instance over plain HTTP, for reads on the hot path
// (readHere) and the executor's calls (Forwarder.Call: every write the
// site's executor runs, live or owed). A request is written and its
// answer's head read on the calling goroutine: net/http's Transport
// hands every request to a writing and a reading goroutine of the
// connection and waits for them, and the profile of the local hop
// showed those wake-ups, not the work, as most of what the agent added
// to a read. The other writes (a client's request run on one site
// without the executor) and everything over TLS keep the Transport.
//
// A connection the application closed while it was idle fails its next
// request before any answer: a read (GET, HEAD) is then sent again once,
// on a new connection; an executor's call checks the connection first
// and sends again only what cannot have left (do). Idle connections are
// dropped after IdleTimeout, below Node.js' keep-alive timeout (5 s) so
// that such failures stay rare.
type appConns struct {
	addr string // host:port
	// MaxIdle bounds the idle connections kept; IdleTimeout their age.
	maxIdle     int
	idleTimeout time.Duration
	timeout     time.Duration // bounds one request (Config.SiteTimeout)

	mu   sync.Mutex
	idle []*appConn
}

// appConn is one connection of the pool.
type appConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer // writes through the appConn (Write)
	used time.Time
	// written counts the bytes written on c since it was last reset:
	// whether a failed request reached the application at all (do).
	written int64
}

// Write writes on the connection, counting what it wrote.
func (ac *appConn) Write(p []byte) (int, error) {
	n, err := ac.c.Write(p)
	ac.written += int64(n)
	return n, err
}

// alive reports whether an idle connection can carry a request that
// must not be sent twice: the application did not close it, nor send
// anything unasked, while it idled. The kernel is asked without waiting
// (a peek of one byte that would block): net/http's Transport knows the
// same from the read it keeps pending on each idle connection. A
// connection that is not a socket is taken as alive.
func (ac *appConn) alive() bool {
	if ac.br.Buffered() > 0 {
		return false
	}
	sc, ok := ac.c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	var peekErr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, peekErr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // one look, never a wait
	})
	// Nothing to read (EAGAIN) is the one answer of a live idle
	// connection: 0 bytes is the application's close, a byte an answer
	// nobody asked for, any other error a reset.
	return err == nil && (errors.Is(peekErr, syscall.EAGAIN) || errors.Is(peekErr, syscall.EWOULDBLOCK))
}

func newAppConns(addr string, timeout time.Duration) *appConns {
	return &appConns{addr: addr, maxIdle: 256, idleTimeout: 2 * time.Second, timeout: timeout}
}

// get returns the most recently used idle connection, or nil.
func (p *appConns) get() *appConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 {
		ac := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if time.Since(ac.used) < p.idleTimeout {
			return ac
		}
		ac.c.Close()
	}
	return nil
}

// put keeps a connection whose last answer was read whole.
func (p *appConns) put(ac *appConn) {
	ac.used = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= p.maxIdle {
		ac.c.Close()
		return
	}
	p.idle = append(p.idle, ac)
}

// close drops every idle connection.
func (p *appConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ac := range p.idle {
		ac.c.Close()
	}
	p.idle = nil
}

func (p *appConns) dial(ctx context.Context) (*appConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	ac := &appConn{c: c, br: bufio.NewReaderSize(c, 16<<10)}
	ac.bw = bufio.NewWriterSize(ac, 4<<10)
	return ac, nil
}

// errAborted: the request's context ended while it waited for the
// application.
var errAborted = errors.New("request aborted")

// conn returns an idle connection, reused reporting so, or a new one.
// With checkAlive, idle connections the application closed (or wrote
// on) while they idled are dropped first (alive): what the executor
// sends must not reach the application twice.
func (p *appConns) conn(ctx context.Context, checkAlive bool) (ac *appConn, reused bool, err error) {
	ac = p.get()
	for checkAlive && ac != nil && !ac.alive() {
		ac.c.Close()
		ac = p.get()
	}
	if ac != nil {
		return ac, true, nil
	}
	if ac, err = p.dial(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("%w: %w", errAborted, ctx.Err())
		}
		return nil, false, err
	}
	return ac, false, nil
}

// roundTrip sends a read (GET or HEAD, no body) and returns the answer
// with its head read; the caller must close its body, which returns the
// connection to the pool when the body was read whole.
func (p *appConns) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		ac, reused, err := p.conn(ctx, false)
		if err != nil {
			return nil, err
		}
		_ = ac.c.SetDeadline(time.Now().Add(p.timeout))
		stop := context.AfterFunc(ctx, func() { _ = ac.c.SetDeadline(time.Unix(1, 0)) })
		err = writeReadHead(ac.bw, req)
		if err == nil {
			err = ac.bw.Flush()
		}
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(ac.br, req)
		}
		if err != nil {
			stop()
			ac.c.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %w", errAborted, ctx.Err())
			}
			if reused && attempt == 0 {
				continue // closed by the application while idle
			}
			return nil, err
		}
		// The timeout bounds the application's answer until its head; the
		// body may take as long as the client waits for it.
		_ = ac.c.SetDeadline(time.Time{})
		resp.Body = &appBody{p: p, ac: ac, rc: resp.Body, resp: resp, stop: stop}
		return resp, nil
	}
}

// do sends a request of any method, with its body, on a pooled
// connection and reads the answer whole (up to limit bytes), all on the
// calling goroutine: the executor's calls (Forwarder.Call), which
// through net/http's Transport cost an owed create about 150 µs of the
// agent's CPU in its hand-offs to the connection's goroutines. The
// exchange, body included, is bounded by the pool's timeout, as the
// client's (clientOf) is, and ends with ctx.
//
// A request is sent again only when it cannot have reached the
// application: an idle connection is checked first (alive: one closed
// while it idled is dropped before anything is written on it), and a
// request whose write failed before its first byte left (a reset) goes
// once more, on another connection (an idle one that passes alive, or a
// new one). A write that failed after its first byte,
// or an answer that did not come, is an error whatever the method: a
// create is not sent twice (the executor treats it as maybe executed,
// as it did a Transport's error; a read can be asked again by its
// caller).
func (p *appConns) do(ctx context.Context, req *http.Request, limit int64) (*http.Response, []byte, error) {
	for attempt := 0; ; attempt++ {
		ac, _, err := p.conn(ctx, true)
		if err != nil {
			return nil, nil, err
		}
		resp, body, err := p.exchange(ctx, ac, req, limit)
		if err == nil {
			return resp, body, nil
		}
		ac.c.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%w: %w", errAborted, ctx.Err())
		}
		if ac.written > 0 || attempt > 0 {
			return nil, nil, err
		}
		// Nothing of it left: it goes again, with its body from the start.
		if req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				return nil, nil, err
			}
			if req.Body, err = req.GetBody(); err != nil {
				return nil, nil, err
			}
		}
	}
}

// exchange writes req on ac and reads its answer whole; on success ac
// is back in the pool (or closed, when the application said so).
func (p *appConns) exchange(ctx context.Context, ac *appConn, req *http.Request, limit int64) (*http.Response, []byte, error) {
	ac.written = 0
	_ = ac.c.SetDeadline(time.Now().Add(p.timeout))
	stop := context.AfterFunc(ctx, func() { _ = ac.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := req.Write(ac.bw)
	if err == nil {
		err = ac.bw.Flush()
	}
	if err != nil {
		return nil, nil, err
	}
	resp, err := readFinal(ac.br, req)
	if err != nil {
		return nil, nil, err
	}
	body, err := readBody(resp, limit)
	resp.Body.Close()
	if err != nil {
		return nil, nil, err
	}
	if !stop() || resp.Close || ac.br.Buffered() > 0 {
		ac.c.Close()
	} else {
		_ = ac.c.SetDeadline(time.Time{})
		p.put(ac)
	}
	return resp, body, nil
}

// appBody is an answer's body read from a pooled connection.
type appBody struct {
	p    *appConns
	ac   *appConn
	rc   io.ReadCloser
	resp *http.Response
	stop func() bool
	n    int64
	eof  bool
	done bool
	// spliced: the body was moved past the HTTP reader (spliceTo),
	// which must not be read or closed after.
	spliced bool
}

// spliceMin is the smallest rest of a body spliceTo moves in the
// kernel: below it, a copy through the agent costs less than the pipe.
const spliceMin = 64 << 10

// spliceTo writes the body to w when w is an io.ReaderFrom (the client's
// connection, through net/http) and the body has a known length: the
// bytes the connection's reader holds already, then the rest read
// straight from the application's TCP connection, which the kernel
// moves to the client's (splice) without the agent copying it. It
// reports false, having read and written nothing, for any other body
// (chunked, small, read from already, a connection other than TCP).
func (b *appBody) spliceTo(w io.Writer) (bool, error) {
	rf, ok := w.(io.ReaderFrom)
	tcp, isTCP := b.ac.c.(*net.TCPConn)
	size := b.resp.ContentLength
	held := int64(b.ac.br.Buffered())
	if !ok || !isTCP || b.n != 0 || b.eof || len(b.resp.TransferEncoding) > 0 || size-held < spliceMin {
		return false, nil
	}
	b.spliced = true
	if held > 0 {
		p, _ := b.ac.br.Peek(int(held))
		n, err := w.Write(p)
		_, _ = b.ac.br.Discard(n)
		b.n += int64(n)
		if err != nil {
			return true, err
		}
	}
	n, err := rf.ReadFrom(&io.LimitedReader{R: tcp, N: size - b.n})
	b.n += n
	if err == nil && b.n < size {
		err = io.ErrUnexpectedEOF
	}
	b.eof = err == nil
	return true, err
}

func (b *appBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close returns the connection to the pool when the body was read whole
// and nothing else is pending on it; otherwise it closes it (never
// reading what is left: a stream could go on for ever).
func (b *appBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	whole := b.eof || (b.resp.ContentLength >= 0 && b.n == b.resp.ContentLength) || b.resp.Request.Method == http.MethodHead
	notFired := b.stop()
	if !whole || !notFired || b.resp.Close || b.ac.br.Buffered() > 0 {
		b.ac.c.Close()
		if !b.spliced {
			_ = b.rc.Close()
		}
		return nil
	}
	if !b.spliced {
		_ = b.rc.Close() // nothing left: returns at once
	}
	b.p.put(b.ac)
	return nil
}

// headNotWritten are the request headers writeReadHead writes itself or
// never (as http.Request.Write).
var headNotWritten = map[string]bool{"Host": true, "User-Agent": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true}

// writeReadHead writes the head of a GET or HEAD with no body (a read
// sent to the application, or to another site's agent on a stream) as
// http.Request.Write would — request line, Host, User-Agent (Go's when
// the request has none), the other headers — but without sorting the
// headers or copying their values, which cost the local hop a few µs a
// read. A request it cannot write that simply (another method, which
// Request.Write gives a "Content-Length: 0", a body, a header name or
// value with a byte Request.Write would drop or replace, a Host other
// than its URL's) goes through Request.Write.
func writeReadHead(bw *bufio.Writer, req *http.Request) error {
	if (req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 || (req.Host != "" && req.Host != req.URL.Host) || req.Close || len(req.TransferEncoding) > 0 || req.URL.Host == "" || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		return req.Write(bw)
	}
	for k, vs := range req.Header {
		if k == "" || strings.ContainsAny(k, " \t\r\n:()<>@,;\\\"/[]?={}") {
			return req.Write(bw)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				return req.Write(bw)
			}
		}
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.URL.Host)
	bw.WriteString("\r\n")
	ua := "Go-http-client/1.1"
	if vs, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(vs) > 0 {
			ua = strings.Trim(vs[0], " \t")
		}
	}
	if ua != "" {
		bw.WriteString("User-Agent: ")
		bw.WriteString(ua)
		bw.WriteString("\r\n")
	}
	for k, vs := range req.Header {
		if headNotWritten[k] {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(strings.Trim(v, " \t"))
			bw.WriteString("\r\n")
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// callPooled runs a request on this site's application on a pooled
// connection (appConns.do), as callApp does through the Transport.
func (f *Forwarder) callPooled(ctx context.Context, pool *appConns, req *request, method, path string) result {
	self := f.cfg.Membership.Site()
	out, err := f.appRequest(ctx, req, method, path, nil)
	if err != nil {
		return result{site: self, err: err}
	}
	resp, body, err := pool.do(ctx, out, f.cfg.MaxBody)
	if err != nil {
		return result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}
	}
	return result{site: self, status: resp.StatusCode, header: resp.Header, body: body}
}
