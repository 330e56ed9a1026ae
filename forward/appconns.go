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
	"time"
)

// appConns is a pool of keep-alive HTTP/1.1 connections to one
// application instance over plain HTTP, for reads on the hot path
// (readHere). A read is written and its answer's head read on the
// calling goroutine: net/http's Transport hands every request to a
// writing and a reading goroutine of the connection and waits for them,
// and the profile of the local hop showed those wake-ups, not the work,
// as most of what the agent added to a read. Writes and everything over
// TLS keep the Transport (which knows when a request may be sent again).
//
// A connection the application closed while it was idle fails its next
// request before any answer: a read (GET, HEAD) is then sent again once,
// on a new connection. Idle connections are dropped after IdleTimeout,
// below Node.js' keep-alive timeout (5 s) so that such failures stay
// rare.
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
	bw   *bufio.Writer
	used time.Time
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
	return &appConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// errAborted: the request's context ended while it waited for the
// application.
var errAborted = errors.New("request aborted")

// roundTrip sends a read (GET or HEAD, no body) and returns the answer
// with its head read; the caller must close its body, which returns the
// connection to the pool when the body was read whole.
func (p *appConns) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		ac := p.get()
		reused := ac != nil
		if ac == nil {
			var err error
			if ac, err = p.dial(ctx); err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("%w: %w", errAborted, ctx.Err())
				}
				return nil, err
			}
		}
		_ = ac.c.SetDeadline(time.Now().Add(p.timeout))
		stop := context.AfterFunc(ctx, func() { _ = ac.c.SetDeadline(time.Unix(1, 0)) })
		err := writeReadHead(ac.bw, req)
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
