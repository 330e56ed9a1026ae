package forward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/scope"
)

// resourceOf finds the catalog resource a request names: a global id in
// the path for a default service, the item's path for a client-named one
// (found among the resources this site holds).
func (f *Forwarder) resourceOf(req *request) (string, bool) {
	if req.route.id == "" {
		return "", false
	}
	if !req.route.named {
		return req.route.id, catalog.ValidID(req.route.id)
	}
	return f.cfg.Catalog.LookupLocal(req.svc.Name, f.cfg.Membership.Site(), req.route.key())
}

// clientName is the name a create's body gives the resource of a
// client-named service.
func (f *Forwarder) clientName(req *request) (string, bool) {
	if req.svc.Routes == nil {
		return "", false
	}
	if req.route.id != "" {
		return req.route.id, true // an apply names it in its path
	}
	return req.svc.Routes.Name(req.body)
}

// appliesNew reports a server-side apply (PATCH with an apply content
// type) of a client-named object the catalog does not know, from a site
// the scope places it on: the apply creates the object where it is
// missing, so it is run and recorded as a create (the recorded PATCH is
// what a site that was away replays).
func (f *Forwarder) appliesNew(req *request) bool {
	return req.route.named && req.route.id != "" && req.route.rest == "" &&
		req.r.Method == http.MethodPatch && strings.HasPrefix(req.r.Header.Get("Content-Type"), "application/apply-patch")
}

// createPending reports whether a site still owes the creation of a
// resource: it cannot serve it yet.
func createPending(res catalog.Resource, v catalog.SiteView) bool {
	if len(res.Operations) == 0 {
		return false
	}
	first := res.Operations[0].ID
	for _, p := range v.Pending {
		if p == first {
			return true
		}
	}
	return false
}

// streams reports whether the answer to a request is a stream.
func (f *Forwarder) streams(req *request) bool {
	return req.svc.Routes != nil && req.svc.Routes.Stream(req.r)
}

// addUpstream builds the clients of a service with its own credentials or
// TLS settings.
func (f *Forwarder) addUpstream(s Service) {
	if f.upstreams == nil {
		f.upstreams = map[string][2]*http.Client{}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.Upstream.TLS != nil {
		tr.TLSClientConfig = s.Upstream.TLS.Clone()
	}
	// A pool deep enough for every client of a busy site (a connection
	// per request in flight, and one per watch) to find an idle
	// connection: a new one costs a TCP handshake on the hot path, and
	// the default of 2 per host closed most of them after each burst.
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 256
	// Idle connections are dropped before Node.js' keep-alive timeout
	// (5 s), as the read pool's are (appConns): a write sent on a
	// connection the application is closing fails (connection reset) and
	// is not sent again blindly. Seen at the heal in cheops bench
	// convergence, where the catch-up's first writes went out on
	// connections idle for the length of the cut.
	tr.IdleConnTimeout = 2 * time.Second
	// The answers are shown to clients as the application gave them, or
	// rewritten (global ids): the transport asks for no compression of
	// its own, which it would undo on every answer.
	tr.DisableCompression = true
	// A large body in 64 KiB writes and reads, not 4 KiB ones.
	tr.WriteBufferSize, tr.ReadBufferSize = 64<<10, 64<<10
	if s.URL.Scheme == "http" && s.Upstream.TLS == nil {
		if f.reads == nil {
			f.reads = map[string]*appConns{}
		}
		host := s.URL.Host
		if s.URL.Port() == "" {
			host += ":80"
		}
		f.reads[s.Name] = newAppConns(host, f.cfg.SiteTimeout)
	}
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	f.upstreams[s.Name] = [2]*http.Client{
		{Transport: tr, Timeout: f.cfg.SiteTimeout, CheckRedirect: noRedirect},
		{Transport: tr, CheckRedirect: noRedirect}, // bounded by the request's context
	}
}

// clientOf is the client that calls a service's application; stream
// selects the one without a timeout.
func (f *Forwarder) clientOf(s Service, stream bool) *http.Client {
	if c, ok := f.upstreams[s.Name]; ok {
		if stream {
			return c[1]
		}
		return c[0]
	}
	return f.client
}

// prepareUpstream sets the application's credentials on a request to it.
func (f *Forwarder) prepareUpstream(s Service, out *http.Request) {
	if n, ok := s.Routes.(Negotiator); ok {
		n.Outgoing(out.Header)
	}
	if s.Upstream.Token != "" {
		out.Header.Set("Authorization", "Bearer "+s.Upstream.Token)
	}
}

// mergeRead answers a cross read of a client-named service with its
// routes' merge of every site's answer.
func (f *Forwarder) mergeRead(w http.ResponseWriter, req *request, results map[string]result, outcomes map[string]string) {
	sites := make([]string, 0, len(results))
	for s := range results {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	var answers []SiteAnswer
	var failed result
	for _, s := range sites {
		r := results[s]
		outcomes[s] = r.outcome()
		if r.ok() {
			answers = append(answers, SiteAnswer{Site: s, Header: r.header, Body: r.body})
		} else if failed.site == "" {
			failed = r
		}
	}
	if len(answers) == 0 {
		if failed.site == "" {
			errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, "no site could run the request: "+sitesHeader(outcomes))
			return
		}
		f.reply(w, failed, "", outcomes)
		return
	}
	body, ct, err := req.svc.Routes.Merge(req.r, answers)
	if err != nil {
		errcode.Write(w, http.StatusBadGateway, "merge", fmt.Sprintf("merge the answers of %s: %v", strings.Join(sites, ", "), err))
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set(HeaderSites, sitesHeader(outcomes))
	w.Header().Set(HeaderSite, f.cfg.Membership.Site())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// streamRead serves a streamed read (a watch) from the first reachable
// target of the plan (standbys after): the answer is passed on as it
// arrives until either side ends it.
func (f *Forwarder) streamRead(w http.ResponseWriter, req *request, plan *scope.Plan) {
	var last error = fmt.Errorf("no site reachable")
	for _, s := range plan.ReadOrder() {
		var resp *http.Response
		var done func()
		if s == f.cfg.Membership.Site() {
			resp, done, last = f.openLocalStream(req, req.rawPath)
		} else {
			resp, done, last = f.openRemoteStream(req, s)
		}
		if last == nil {
			w.Header().Set(HeaderSite, s)
			pipe(w, resp)
			done()
			return
		}
	}
	errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, last.Error())
}

// openLocalStream starts a streamed request on this site's application.
func (f *Forwarder) openLocalStream(req *request, path string) (*http.Response, func(), error) {
	target := strings.TrimRight(req.svc.URL.String(), "/") + path
	out, err := http.NewRequestWithContext(req.r.Context(), req.r.Method, target, http.NoBody)
	if err != nil {
		return nil, nil, err
	}
	copyHeaders(out.Header, req.r.Header)
	appHeaders(out.Header)
	out.Header.Set(HeaderScope, req.scope.String())
	f.prepareUpstream(req.svc, out)
	resp, err := f.clientOf(req.svc, true).Do(out)
	if err != nil {
		return nil, nil, fmt.Errorf("application of %s: %w", f.cfg.Membership.Site(), err)
	}
	return resp, func() { resp.Body.Close() }, nil
}

// openRemoteStream starts a streamed request on another site's agent.
// The stream's write side stays open: closing it (or resetting the
// stream) tells the other agent that the client went away.
func (f *Forwarder) openRemoteStream(req *request, site string) (*http.Response, func(), error) {
	p, ok := f.cfg.Membership.PeerOf(site)
	if !ok {
		return nil, nil, fmt.Errorf("site %s: no peer known", site)
	}
	ctx, cancel := context.WithTimeout(req.r.Context(), f.cfg.SiteTimeout)
	s, err := f.cfg.Host.NewStream(ctx, p, Protocol)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("site %s: %w", site, err)
	}
	out, err := http.NewRequest(req.r.Method, "http://cheops/svc/"+req.svc.Name+req.rawPath, http.NoBody)
	if err != nil {
		s.Reset()
		return nil, nil, err
	}
	copyHeaders(out.Header, req.r.Header)
	out.Header.Set(HeaderScope, req.scope.String())
	out.Header.Set(HeaderHop, f.cfg.Membership.Site())
	out.Header.Set(headerStream, "1")
	_ = s.SetDeadline(time.Now().Add(f.cfg.SiteTimeout))
	if err := out.Write(s); err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("site %s: send: %w", site, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(s), out)
	if err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("site %s: read answer: %w", site, err)
	}
	_ = s.SetDeadline(time.Time{})
	// End the stream when the client goes away, even if nothing arrives.
	stop := context.AfterFunc(req.r.Context(), func() { s.Reset() })
	return resp, func() { stop(); resp.Body.Close(); s.Reset() }, nil
}

// headerStream marks a streamed request between agents: the requester
// keeps its write side open until it is done.
const headerStream = "X-Cheops-Stream"

// pipe writes an answer to the client as it arrives, flushing each read.
func pipe(w http.ResponseWriter, resp *http.Response) {
	copyHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveStreamed runs a streamed request another agent sent on this
// site's application, writing the answer on the libp2p stream as it
// arrives (HTTP/1.1, chunked). It ends when the application ends the
// answer or the requester closes or resets the stream.
func (f *Forwarder) serveStreamed(s network.Stream, req *http.Request, br *bufio.Reader, site string) {
	_ = s.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// The requester sends nothing more: a read returns when it
		// closes or resets the stream.
		_, _ = io.Copy(io.Discard, br)
		cancel()
	}()
	sw := &streamWriter{s: s, header: http.Header{}}
	f.serve(sw, req.WithContext(ctx), site)
	sw.finish()
}

// streamWriter is an http.ResponseWriter writing an HTTP/1.1 response
// with a chunked body straight onto a libp2p stream.
type streamWriter struct {
	s       network.Stream
	header  http.Header
	started bool
	chunks  io.WriteCloser
	err     error
}

func (w *streamWriter) Header() http.Header { return w.header }

func (w *streamWriter) WriteHeader(status int) {
	if w.started {
		return
	}
	w.started = true
	w.header.Del("Content-Length")
	w.header.Set("Transfer-Encoding", "chunked")
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	_ = w.header.Write(&b)
	b.WriteString("\r\n")
	_, w.err = io.WriteString(w.s, b.String())
	w.chunks = httputil.NewChunkedWriter(w.s)
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.chunks.Write(p)
	w.err = err
	return n, err
}

// Flush: every chunk is written to the stream at once.
func (w *streamWriter) Flush() {}

func (w *streamWriter) finish() {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil {
		_ = w.chunks.Close()
		_, _ = io.WriteString(w.s, "\r\n")
	}
}

// streamLocal serves a streamed request another agent sent, from this
// site's application.
func (f *Forwarder) streamLocal(w http.ResponseWriter, req *request) {
	resp, done, err := f.openLocalStream(req, req.rawPath)
	if err != nil {
		errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, err.Error())
		return
	}
	defer done()
	w.Header().Set(HeaderSite, f.cfg.Membership.Site())
	pipe(w, resp)
}

// relays reports a write to a resource — by name for a client-named
// service, by global id for another — that this site neither holds nor is
// placed on: a site of the scope, whose catalog may know the resource,
// coordinates it (records it, sends it to every replica, marks the sites
// that are away pending). Sent as a plain hop, it would change that
// site's copy alone.
func (f *Forwarder) relays(req *request, plan *scope.Plan) bool {
	switch req.r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return req.route.id != "" && (req.route.named || catalog.ValidID(req.route.id)) && req.hop == "" &&
		!slices.Contains(plan.Required(), f.cfg.Membership.Site())
}

// relayNamed hands a write to a resource to the nearest reachable site
// of the plan, as a coordinator (handOver).
func (f *Forwarder) relayNamed(w http.ResponseWriter, req *request, plan *scope.Plan) {
	f.handOver(w, req, plan)
}
