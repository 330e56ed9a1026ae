package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// GoProxyCommand is the hidden cheops command that runs ServeGoProxy:
// the forwarding scenario starts it as a process of its own, as the
// agents and HAProxy are, so that it pays the same wake-ups.
const GoProxyCommand = "bench-goproxy"

// ServeGoProxy serves a bare reverse proxy on listen in front of backend
// (host:port) until ctx ends: the floor of a proxy written in Go,
// measured beside HAProxy and the agents by the forwarding scenario.
//
// Mode "net/http" is an httputil.ReverseProxy behind an http.Server,
// its Transport keeping connections to the backend alive (path "go
// proxy"). Mode "server" keeps net/http's server but sends each request
// on the handler's goroutine over keep-alive connections of its own, as
// the agent reads its application (path "go server proxy"): what is left
// is the server's share. Mode "raw" is Go without net/http's server and
// Transport (path "go raw proxy"): one goroutine per client connection
// reads a request (http.ReadRequest), writes it on a backend connection
// of its own, reads the answer (http.ReadResponse) and writes it back.
// The last two do nothing else — no hop-by-hop headers dropped but
// the framing ones, no timeouts: measures, not proxies to deploy.
func ServeGoProxy(ctx context.Context, listen, backend, mode string) error {
	var h http.Handler
	switch mode {
	case "raw":
		return serveRawProxy(ctx, listen, backend)
	case "server":
		h = &ownConnsProxy{backend: backend}
	case "net/http":
		target := &url.URL{Scheme: "http", Host: backend}
		h = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute,
				DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext},
		}
	default:
		return fmt.Errorf("bench: go proxy: unknown mode %q (want net/http, server or raw)", mode)
	}
	srv := &http.Server{Addr: listen, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = srv.Close()
		case <-done:
		}
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("bench: go proxy: %w", err)
	}
	return nil
}

// ownConnsProxy is ServeGoProxy's "server" mode: each request is sent on
// the handler's goroutine over an idle connection to the backend, or a
// new one, kept again once its answer was read whole. As the agent's
// pool does, it drops connections idle for 2 s (json-server closes them
// after 5) and sends a request again, once, on a new connection when a
// kept one fails.
type ownConnsProxy struct {
	backend string
	mu      sync.Mutex
	idle    []*backendConn
}

type backendConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// conn returns a kept connection (reused) or a new one.
func (p *ownConnsProxy) conn() (bc *backendConn, reused bool, err error) {
	p.mu.Lock()
	for len(p.idle) > 0 && bc == nil {
		n := len(p.idle)
		bc, p.idle = p.idle[n-1], p.idle[:n-1]
		if time.Since(bc.used) > 2*time.Second {
			bc.c.Close()
			bc = nil
		}
	}
	p.mu.Unlock()
	if bc != nil {
		return bc, true, nil
	}
	c, err := net.DialTimeout("tcp", p.backend, 5*time.Second)
	if err != nil {
		return nil, false, err
	}
	return &backendConn{c: c, br: bufio.NewReader(c), bw: bufio.NewWriter(c)}, false, nil
}

func (p *ownConnsProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var resp *http.Response
	var bc *backendConn
	for attempt := 0; ; attempt++ {
		var reused bool
		var err error
		if bc, reused, err = p.conn(); err == nil {
			if resp, err = sendOn(bc, r); err != nil {
				bc.c.Close()
			}
		}
		if err == nil {
			break
		}
		if !reused || attempt > 0 || r.ContentLength != 0 {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
	}
	for k, v := range resp.Header {
		switch k {
		case "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length":
		default:
			w.Header()[k] = v
		}
	}
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close {
		bc.c.Close()
		return
	}
	bc.used = time.Now()
	p.mu.Lock()
	p.idle = append(p.idle, bc)
	p.mu.Unlock()
}

// sendOn writes r on bc and reads the answer's head.
func sendOn(bc *backendConn, r *http.Request) (*http.Response, error) {
	if err := r.Write(bc.bw); err != nil {
		return nil, err
	}
	if err := bc.bw.Flush(); err != nil {
		return nil, err
	}
	return http.ReadResponse(bc.br, r)
}

// serveRawProxy is ServeGoProxy's raw proxy.
func serveRawProxy(ctx context.Context, listen, backend string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("bench: go raw proxy: %w", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("bench: go raw proxy: %w", err)
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rawExchanges(c, backend)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

// rawExchanges passes the requests of one client connection to backend,
// on a connection of their own, until either side closes.
func rawExchanges(c net.Conn, backend string) {
	defer c.Close()
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	var b net.Conn
	var bbr *bufio.Reader
	var bbw *bufio.Writer
	defer func() {
		if b != nil {
			b.Close()
		}
	}()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if b == nil {
			if b, err = net.DialTimeout("tcp", backend, 5*time.Second); err != nil {
				return
			}
			bbr, bbw = bufio.NewReader(b), bufio.NewWriter(b)
		}
		if err := req.Write(bbw); err != nil || bbw.Flush() != nil {
			return
		}
		resp, err := http.ReadResponse(bbr, req)
		if err != nil {
			return
		}
		err = resp.Write(bw)
		resp.Body.Close()
		if err != nil || bw.Flush() != nil {
			return
		}
	}
}
