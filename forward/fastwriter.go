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
)

// fastWriter is the http.ResponseWriter of a fast read: it writes the
// answer as net/http's server writes a handler's (server.go: response,
// chunkWriter.writeHeader) — the body held in a 2 KiB buffer before the
// head is written, so that a handler that ends within it gets an
// automatic Content-Length and one that does not a chunked body; a Date
// unless the handler set one; Content-Type sniffed from the body when
// the handler set none; the handler's headers sorted, then the server's
// own (Date, Content-Length, Content-Type, Connection,
// Transfer-Encoding).
type fastWriter struct {
	bw      *bufio.Writer // the client's connection
	conn    net.Conn
	req     *http.Request
	header  http.Header
	bodyBuf *bufio.Writer // net/http's bufferBeforeChunkingSize, in front of the head (sink)
	sink    fastSink

	status      int
	wroteHeader bool // WriteHeader called (or implied)
	headSent    bool
	done        bool  // the handler returned: an automatic Content-Length is possible
	cl          int64 // the answer's Content-Length, -1 when not known
	written     int64
	chunking    bool
	closeAfter  bool
	err         error
}

// fastSink receives what bodyBuf lets through: the head first.
type fastSink struct{ w *fastWriter }

func (s fastSink) Write(p []byte) (int, error) {
	w := s.w
	if !w.headSent {
		w.writeHead(p)
	}
	if w.req.Method == http.MethodHead || len(p) == 0 {
		return len(p), nil
	}
	if w.chunking {
		fmt.Fprintf(w.bw, "%x\r\n", len(p))
	}
	n, err := w.bw.Write(p)
	if w.chunking && err == nil {
		_, err = w.bw.WriteString("\r\n")
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

// chunkLimit is net/http's bufferBeforeChunkingSize.
const chunkLimit = 2048

func (w *fastWriter) reset(bw *bufio.Writer, conn net.Conn, r *http.Request) {
	bodyBuf := w.bodyBuf
	if bodyBuf == nil {
		bodyBuf = bufio.NewWriterSize(nil, chunkLimit)
	}
	*w = fastWriter{bw: bw, conn: conn, req: r, header: http.Header{}, bodyBuf: bodyBuf, cl: -1}
	w.sink = fastSink{w}
	w.bodyBuf.Reset(w.sink)
}

func (w *fastWriter) Header() http.Header { return w.header }

func (w *fastWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational answer goes at once; the final one follows.
		writeStatusLine(w.bw, code)
		_ = w.header.WriteSubset(w.bw, map[string]bool{"Content-Length": true, "Transfer-Encoding": true})
		w.bw.WriteString("\r\n")
		if err := w.bw.Flush(); err != nil {
			w.err = err
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.cl = v
		} else {
			w.header.Del("Content-Length")
		}
	}
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.cl != -1 && w.written > w.cl {
		return 0, http.ErrContentLength
	}
	return w.bodyBuf.Write(p)
}

// ReadFrom moves a body of known length from src in the kernel when the
// connection can (splice from the application's TCP connection, as
// net/http's response.ReadFrom does): the first 512 bytes are written
// as any, for the head.
func (w *fastWriter) ReadFrom(src io.Reader) (int64, error) {
	var n int64
	if !w.headSent {
		n0, err := io.Copy(writerOnly{w}, io.LimitReader(src, 512))
		n += n0
		if err != nil || n0 < 512 {
			return n, err
		}
	}
	if err := w.bodyBuf.Flush(); err != nil {
		return n, err
	}
	if !w.headSent {
		w.writeHead(nil)
	}
	rf, ok := w.conn.(io.ReaderFrom)
	if !ok || w.chunking || !bodyAllowed(w.status) || w.req.Method == http.MethodHead {
		n0, err := io.Copy(writerOnly{w}, src)
		return n + n0, err
	}
	if err := w.bw.Flush(); err != nil {
		return n, err
	}
	n0, err := rf.ReadFrom(src)
	n += n0
	w.written += n0
	return n, err
}

type writerOnly struct{ io.Writer }

// writeHead writes the answer's head; p is the start of its body.
func (w *fastWriter) writeHead(p []byte) {
	w.headSent = true
	h := w.header
	isHEAD := w.req.Method == http.MethodHead
	var date, clen, ctype, conn, te string
	if w.done && bodyAllowed(w.status) && h.Get("Content-Length") == "" && h.Get("Transfer-Encoding") == "" && (!isHEAD || len(p) > 0) {
		w.cl = int64(len(p))
		clen = strconv.Itoa(len(p))
	}
	if h.Get("Connection") == "close" {
		w.closeAfter = true
	}
	if bodyAllowed(w.status) {
		_, haveType := h["Content-Type"]
		if h.Get("Content-Encoding") == "" && !haveType && h.Get("Transfer-Encoding") == "" && len(p) > 0 {
			ctype = http.DetectContentType(p)
		}
	} else {
		h.Del("Content-Length")
		h.Del("Transfer-Encoding")
		if w.status == http.StatusNotModified {
			h.Del("Content-Type")
		}
	}
	if _, ok := h["Date"]; !ok {
		date = time.Now().UTC().Format(http.TimeFormat)
	}
	switch {
	case isHEAD || !bodyAllowed(w.status) || w.status == http.StatusNoContent || w.cl != -1:
		h.Del("Transfer-Encoding")
	default:
		// The handlers of the fast path never set Transfer-Encoding
		// (hop-by-hop headers are not copied): no identity case.
		w.chunking = true
		te = "chunked"
		h.Del("Transfer-Encoding")
		h.Del("Content-Length")
	}
	if w.closeAfter && !strings.EqualFold(h.Get("Connection"), "close") {
		h.Del("Connection")
		conn = "close"
	}
	writeStatusLine(w.bw, w.status)
	_ = h.Write(w.bw)
	for _, kv := range [...][2]string{{"Date", date}, {"Content-Length", clen}, {"Content-Type", ctype}, {"Connection", conn}, {"Transfer-Encoding", te}} {
		if kv[1] != "" {
			w.bw.WriteString(kv[0])
			w.bw.WriteString(": ")
			w.bw.WriteString(kv[1])
			w.bw.WriteString("\r\n")
		}
	}
	w.bw.WriteString("\r\n")
}

// finish ends the answer once the handler returned; it reports whether
// the connection can carry another request (as net/http's
// shouldReuseConnection).
func (w *fastWriter) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.done = true
	if err := w.bodyBuf.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	if !w.headSent {
		w.writeHead(nil)
	}
	if w.chunking {
		w.bw.WriteString("0\r\n\r\n")
	}
	w.bodyBuf.Reset(nil)
	if w.err != nil || w.closeAfter {
		return false
	}
	return w.cl == -1 || w.written == w.cl || w.req.Method == http.MethodHead || !bodyAllowed(w.status)
}

func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code " + strconv.Itoa(code))
	}
	bw.WriteString("\r\n")
}

// bodyAllowed is net/http's bodyAllowedForStatus.
func bodyAllowed(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}
