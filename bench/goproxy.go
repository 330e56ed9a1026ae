package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
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
// Without raw it is net/http's: an httputil.ReverseProxy behind an
// http.Server, its Transport keeping connections to the backend alive
// (path "go proxy"). With raw it is Go without net/http's server and
// Transport (path "go raw proxy"): one goroutine per client connection
// reads a request (http.ReadRequest), writes it on a backend connection
// of its own, reads the answer (http.ReadResponse) and writes it back,
// nothing else — no hop-by-hop headers dropped, no timeouts, no
// per-request goroutine; a measure, not a proxy to deploy.
func ServeGoProxy(ctx context.Context, listen, backend string, raw bool) error {
	if raw {
		return serveRawProxy(ctx, listen, backend)
	}
	target := &url.URL{Scheme: "http", Host: backend}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext},
	}
	srv := &http.Server{Addr: listen, Handler: rp, ReadHeaderTimeout: 10 * time.Second}
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
