package forward

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"cheops/errcode"
)

// A large upload to this site's application moves in the kernel.
//
// Design note — a streamed PUT (streamsBody: nothing records its body)
// that runs on this site's application only, over plain HTTP, has its
// body moved from the client's TCP connection to the application's by
// splice: the agent never reads it. Go's HTTP server owns the client's
// connection and its buffered reader, so the handler takes the
// connection (Hijack), sends what the server had read of the body
// already, then has the kernel move the rest (net.TCPConn.ReadFrom of
// the client's connection, bounded by Content-Length). The answer is
// written on the connection by hand and says "Connection: close": once
// taken, a connection never returns to the server, and a client opens
// another for its next request — one handshake beside 1 MiB or more.
//
// Guarantees kept: the body is bounded by MaxBody before anything is
// sent (413 above it); the application sees exactly Content-Length
// bytes or a connection cut short, never a short body that looks whole;
// the exchange is bounded by SiteTimeout, as the client's call is
// (clientOf); the answer is the one callApp would have passed on.

// uploadSpliceMin is the smallest body spliceUpload takes. Below it the
// copy through the agent costs less than the connection it closes.
const uploadSpliceMin = 1 << 20

// netConner is a connection wrapping another (tls.Conn and the API's
// errorConn have the method).
type netConner interface{ NetConn() net.Conn }

// tcpOf is the TCP connection under c's wrappers, if any.
func tcpOf(c net.Conn) (*net.TCPConn, bool) {
	for range 8 {
		if t, ok := c.(*net.TCPConn); ok {
			return t, true
		}
		w, ok := c.(netConner)
		if !ok {
			return nil, false
		}
		c = w.NetConn()
	}
	return nil, false
}

// spliceUpload runs a streamed PUT (req.stream) on this site's
// application with its body moved by splice (see the design note). It
// reports false, having read and written nothing, when the request does
// not qualify: a body of unknown length or under uploadSpliceMin, an
// application over TLS, a client connection the server cannot hand
// over (HTTP/2, a wrapper without Hijack), or an application that could
// not be reached (the caller runs the request its usual way, which
// falls back to another site).
func (f *Forwarder) spliceUpload(w http.ResponseWriter, req *request) bool {
	r := req.r
	n := r.ContentLength
	pool := f.reads[req.svc.Name]
	hj, canHijack := w.(http.Hijacker)
	// A request that fell back from another site may have had some of
	// its body read already (fallback.go): only a first attempt is taken.
	if req.stream == nil || req.hop != "" || len(req.fellBack) > 0 || pool == nil || !canHijack || r.ProtoMajor != 1 || r.TLS != nil ||
		len(r.TransferEncoding) > 0 || n < uploadSpliceMin || n > f.cfg.MaxBody {
		return false
	}
	// The connection to the application first: when it cannot be made,
	// nothing of the client's was taken.
	ac, err := pool.dial(r.Context())
	if err != nil {
		return false
	}
	set := w.Header().Clone() // what the handler set so far goes with the answer
	conn, brw, err := hj.Hijack()
	if err != nil {
		ac.c.Close()
		return false
	}
	defer conn.Close()
	deadline := time.Now().Add(f.cfg.SiteTimeout)
	_ = conn.SetDeadline(deadline)
	_ = ac.c.SetDeadline(deadline)
	hw := newHopWriter(conn, r.Method)
	if set != nil {
		hw.header = set
	}
	hw.keepAlive = func() bool { return false }
	hw.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	res, sent := f.uploadTo(ac, req, conn, brw.Reader)
	if !sent {
		// The client's body did not arrive whole: the application got a
		// connection cut short, and the client, gone or not, gets this.
		ac.c.Close()
		errcode.Write(hw, http.StatusBadRequest, "bad_body", fmt.Sprintf("read body: %v", res.err))
		_ = hw.finish()
		return true
	}
	f.reply(hw, f.showHere(req, r.Method, res), "", nil)
	_ = hw.finish()
	return true
}

// uploadTo sends req to the application on ac, its body read from the
// client's connection conn (br: what the server read of it already),
// and reads the answer. sent is false when the client's body ended
// before its length (res.err says why); ac is then left for the caller
// to close. Otherwise ac is closed or kept for the pool's next read.
func (f *Forwarder) uploadTo(ac *appConn, req *request, conn net.Conn, br *bufio.Reader) (res result, sent bool) {
	self := f.cfg.Membership.Site()
	r := req.r
	n := r.ContentLength
	target := strings.TrimRight(req.svc.URL.String(), "/") + req.rawPath
	out, err := http.NewRequest(r.Method, target, http.NoBody)
	if err != nil {
		ac.c.Close()
		return result{site: self, err: err}, true
	}
	appHeaderCopy(out.Header, r.Header)
	out.Header.Del("Expect") // the body follows at once
	out.Header.Set(HeaderScope, req.scopeText())
	f.prepareUpstream(req.svc, out)
	if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		// The client waits for this before it sends the body; Go's
		// server would have sent it at the handler's first read.
		if _, err := io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return result{site: self, err: err}, false
		}
	}
	appErr := writeHead(ac.bw, out, n)
	if appErr == nil {
		appErr = ac.bw.Flush()
	}
	// The body: what the server holds of it, then the rest in the kernel.
	var moved int64
	held := min(int64(br.Buffered()), n)
	if held > 0 {
		p, _ := br.Peek(int(held))
		if appErr == nil {
			_, appErr = ac.c.Write(p)
		}
		moved = held
	}
	var clientErr error
	if appErr == nil {
		src := io.Reader(conn)
		if t, ok := tcpOf(conn); ok {
			src = t
		}
		var m int64
		m, err = io.Copy(ac.c, &io.LimitedReader{R: src, N: n - moved}) // splice when both are TCP
		moved += m
		switch {
		case moved == n:
		case err == nil:
			clientErr = io.ErrUnexpectedEOF // the client's connection ended
		default:
			// Either side may have failed (splice does not say which):
			// the application's answer, when one came, is passed on.
			appErr = err
		}
	}
	if clientErr != nil {
		return result{site: self, err: clientErr}, false
	}
	// The application answers (it may have answered early, refusing
	// the body: the answer is read whatever the body's fate).
	resp, err := readFinal(ac.br, out)
	if err != nil {
		ac.c.Close()
		if appErr != nil {
			err = appErr
		}
		return result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}, true
	}
	body, err := readBody(resp, f.cfg.MaxBody)
	resp.Body.Close()
	if err != nil {
		ac.c.Close()
		return result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}, true
	}
	if appErr != nil || resp.Close || ac.br.Buffered() > 0 {
		ac.c.Close()
	} else {
		_ = ac.c.SetDeadline(time.Time{})
		f.reads[req.svc.Name].put(ac)
	}
	return result{site: self, status: resp.StatusCode, header: resp.Header, body: body}, true
}

// readFinal reads an answer's head, past informational ones (1xx: a
// 100 Continue of an application that answers Expect regardless).
func readFinal(br *bufio.Reader, out *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, out)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, err
		}
		resp.Body.Close()
	}
}

// uploadHeadExcluded are the headers writeHead writes itself.
var uploadHeadExcluded = map[string]bool{"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true}

// writeHead writes out's request line and headers, with a body of n
// bytes to follow (http.Request.Write would want the body as a reader,
// and read it through the agent).
func writeHead(bw *bufio.Writer, out *http.Request, n int64) error {
	bw.WriteString(out.Method)
	bw.WriteByte(' ')
	bw.WriteString(out.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := out.Host // as http.Request.Write: Host, else the URL's
	if host == "" {
		host = out.URL.Host
	}
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if err := out.Header.WriteSubset(bw, uploadHeadExcluded); err != nil {
		return err
	}
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.FormatInt(n, 10))
	_, err := bw.WriteString("\r\n\r\n")
	return err
}
