package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	ds "github.com/ipfs/go-datastore"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/replica"
	"cheops/scope"
)

// Membership is what the forwarder needs to know of the sites.
// *node.Node implements it.
type Membership interface {
	Site() string
	View() scope.View
	PeerOf(site string) (peer.ID, bool)
	SiteOf(p peer.ID) (string, bool)
}

// Config describes a forwarder.
type Config struct {
	Host       host.Host
	Membership Membership
	Catalog    *catalog.Catalog
	Services   []Service
	// Journal is the site's own (not replicated) datastore, where the
	// executor journals what this site's applications ran.
	Journal ds.Datastore
	// ReplicaWait, when positive, replaces the replica deadline of
	// replicated writes (DefaultMinReplicaWait explains the default).
	ReplicaWait time.Duration
	// Registerer receives the executor's metrics (nil: none).
	Registerer prometheus.Registerer
	// MaxBody bounds request bodies (413 above it) and answers read from
	// applications and other sites. 16 MiB, as README.md states.
	MaxBody int64
	// SiteTimeout bounds one execution on one site, local or remote. 10 s
	// leaves room for a slow application behind a WAN link.
	SiteTimeout time.Duration
	Logger      *slog.Logger
}

// DefaultMaxBody is the default limit on bodies.
const DefaultMaxBody = 16 << 20

// Forwarder serves /svc/… and /scope/…/svc/…: it places each request with
// its scope and the catalog, and executes it on the local application or
// through other sites' agents.
type Forwarder struct {
	cfg      Config
	log      *slog.Logger
	services map[string]Service
	client   *http.Client
	// upstreams holds, per service with its own credentials or TLS, the
	// client for buffered calls and the one for streams (no timeout).
	upstreams map[string][2]*http.Client
	// reads holds, per service over plain HTTP, the connections reads
	// and the executor's calls are sent on (appconns.go).
	reads map[string]*appConns
	// exec executes every write at this site, in the catalog's order.
	exec *replica.Executor
	// Sends to replicas that outlive the request they came from (a
	// replica slower than the deadline) run under stopCtx; Close ends
	// them and waits.
	stopCtx context.Context
	stop    context.CancelFunc
	bg      sync.WaitGroup
	// scopes holds the scopes requests carried, parsed.
	scopes scopeCache
	// hops keeps the streams to other sites between two hops.
	hops hopPool
	// waiters are the streams other sites keep open to this one, between
	// two of their requests.
	waiters hopWaiters
	// runAt runs a write on one replica (runAtSite; tests replace it).
	runAt func(ctx context.Context, site string, req *request, wr write, wire string) result
}

// New checks the configuration and starts serving forwarded requests from
// other sites.
func New(cfg Config) (*Forwarder, error) {
	if cfg.Host == nil || cfg.Membership == nil || cfg.Catalog == nil || cfg.Journal == nil {
		return nil, errors.New("forward: host, membership, catalog and journal are required")
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.SiteTimeout <= 0 {
		cfg.SiteTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	f := &Forwarder{cfg: cfg, log: log.With("component", "forward", "site", cfg.Membership.Site()), services: map[string]Service{},
		client: &http.Client{Timeout: cfg.SiteTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if err := CheckServices(cfg.Services); err != nil {
		return nil, err
	}
	for _, s := range cfg.Services {
		if s.IDField == "" {
			s.IDField = "id"
		}
		f.services[s.Name] = s
		f.addUpstream(s)
	}
	var err error
	self := cfg.Membership.Site()
	f.exec, err = replica.NewExecutor(replica.Config{App: f, Journal: cfg.Journal, Registerer: cfg.Registerer, Logger: log.With("site", self),
		Known: func(service, local string) bool { _, ok := cfg.Catalog.LookupLocal(service, self, local); return ok }})
	if err != nil {
		return nil, err
	}
	if err := f.republish(context.Background()); err != nil {
		return nil, err
	}
	f.stopCtx, f.stop = context.WithCancel(context.Background())
	cfg.Host.SetStreamHandler(ProtocolKeepAlive, f.serveStream)
	cfg.Host.SetStreamHandler(Protocol, f.serveStream)
	return f, nil
}

// Executor is this site's executor of operations.
func (f *Forwarder) Executor() *replica.Executor { return f.exec }

// Close stops serving other sites and waits for the sends in flight.
func (f *Forwarder) Close() {
	f.cfg.Host.RemoveStreamHandler(ProtocolKeepAlive)
	f.cfg.Host.RemoveStreamHandler(Protocol)
	f.stop()
	f.bg.Wait()
	f.hops.close()
	f.waiters.close()
	for _, p := range f.reads {
		p.close()
	}
}

// request is one incoming request, parsed.
type request struct {
	r       *http.Request
	svc     Service
	route   route
	rawPath string // path inside the service, with its query
	body    []byte
	// stream, when set, is the body not read yet (streamed): a write
	// that no site records (streamsBody) goes to its one site as it
	// arrives; one placed on several sites reads it first (readStream).
	stream io.Reader
	scope  *scope.Scope
	// canon is scope's canonical text, once computed (scopeText).
	canon string
	hop   string // the site that sent it, when another agent did
	// explicit: the client gave a scope (header, query or path).
	explicit bool
	// fellBack lists the sites the request could not run on although a
	// plan chose them (see fallback.go).
	fellBack []fallback
	// hereFailed is how this site's application failed this very read
	// on the API's fast path, which handed it over (takeHereFailure):
	// plain starts from the fallback.
	hereFailed error
}

// ServeHTTP serves the client API: the request is checked against the
// client contract (checkClient), then placed and run.
func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if status, code, msg := checkClient(r); status != 0 {
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", strings.Join(allowedMethods, ", "))
		}
		errcode.Write(w, status, code, msg)
		return
	}
	f.serve(w, r, "")
}

// serve places and runs a request; hop is the member site that sent it
// over a stream, empty for an API client.
func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, hop string) {
	req, status, code, err := f.parse(w, r, hop)
	if err != nil {
		errcode.Write(w, status, code, err.Error())
		return
	}
	if hop == "" {
		req.hereFailed = takeHereFailure(r.Context())
	}
	if req.hop != "" && r.Header.Get(HeaderOp) != "" {
		f.serveOp(w, req, r.Header.Get(HeaderOp))
		return
	}
	if req.hop != "" && r.Header.Get(HeaderCoordinate) == "" {
		if f.streams(req) {
			f.streamLocal(w, req)
			return
		}
		f.serveLocal(w, req)
		return
	}
	plan, err := f.plan(req)
	if errors.Is(err, scope.ErrNoBinding) {
		// Even for a resource the catalog knows: a scope that does not
		// name the service is a mistake to point out, never ignored.
		errcode.Write(w, http.StatusBadRequest, "unbound_service", err.Error())
		return
	}
	if id, ok := f.resourceOf(req); ok {
		if res, err := f.cfg.Catalog.Get(r.Context(), id); err == nil && res.Service == req.svc.Name {
			f.onResource(w, req, res)
			return
		}
	}
	if err == nil && !req.route.named && catalog.ValidID(req.route.id) && (!req.explicit || slices.Contains(plan.Required(), f.cfg.Membership.Site())) {
		// A global id this site does not hold yet, and a scope that
		// places the request here: wait for the entry, never hand the
		// global id to the application.
		if res, ok := f.awaitResource(r.Context(), req.route.id); ok && res.Service == req.svc.Name {
			f.onResource(w, req, res)
			return
		}
		f.reply(w, unknownResource(f.cfg.Membership.Site(), req.route.id), "", nil)
		return
	}
	if err != nil {
		var unreachable *unreachableError
		switch {
		case errors.Is(err, scope.ErrUnknownSite):
			errcode.Write(w, http.StatusBadRequest, "unknown_site", err.Error())
		case errors.As(err, &unreachable):
			errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, err.Error())
		default:
			errcode.Write(w, http.StatusBadRequest, "bad_scope", err.Error())
		}
		return
	}
	if msg, refused := localIDRefusal(req, plan.Required()); refused {
		errcode.Write(w, http.StatusBadRequest, "local_id", msg)
		return
	}
	f.dispatch(w, req, plan)
}

// dispatch runs a placed request the way its method and path call for;
// a request that falls back (fallback.go) is dispatched again with its
// new plan.
func (f *Forwarder) dispatch(w http.ResponseWriter, req *request, plan *scope.Plan) {
	r := req.r
	switch {
	case r.Method == http.MethodPost && req.route.id == "" && req.route.collection != "/" && !req.route.other:
		f.create(w, req, plan)
	case f.appliesNew(req):
		// A server-side apply of an object nobody recorded creates it.
		f.create(w, req, plan)
	case f.relays(req, plan):
		f.relayNamed(w, req, plan)
	case r.Method == http.MethodGet && req.route.id == "" && len(plan.Required()) > 1 && !req.route.other && !f.streams(req):
		f.crossRead(w, req, plan)
	default:
		f.plain(w, req, plan)
	}
}

// parse reads the service, scope and body of a request.
func (f *Forwarder) parse(w http.ResponseWriter, r *http.Request, hop string) (*request, int, string, error) {
	path := r.URL.EscapedPath()
	scopeText := ""
	if rest, ok := strings.CutPrefix(path, "/scope/"); ok {
		enc, after, _ := strings.Cut(rest, "/")
		s, err := url.PathUnescape(enc)
		if err != nil {
			return nil, http.StatusBadRequest, "bad_scope", fmt.Errorf("scope in path: %v", err)
		}
		scopeText, path = s, "/"+after
	}
	rest, ok := strings.CutPrefix(path, "/svc/")
	if !ok {
		return nil, http.StatusNotFound, "not_found", fmt.Errorf("no route for %s", r.URL.Path)
	}
	name, inner, _ := strings.Cut(rest, "/")
	svc, ok := f.services[name]
	if !ok {
		return nil, http.StatusNotFound, "unknown_service", fmt.Errorf("unknown service %q (this agent serves %s)", name, f.serviceNames())
	}
	req := &request{r: r, svc: svc, hop: hop}
	if hop != "" {
		req.fellBack = avoided(r.Header, hop)
	}
	unescaped, err := url.PathUnescape(inner)
	if err != nil {
		return nil, http.StatusBadRequest, "bad_path", fmt.Errorf("path: %v", err)
	}
	req.route = svc.routeOf(unescaped)
	req.rawPath = "/" + inner
	if r.URL.RawQuery != "" {
		q := r.URL.Query()
		q.Del("scope")
		if enc := q.Encode(); enc != "" {
			req.rawPath += "?" + enc
		}
	}
	if h := r.Header.Get(HeaderScope); h != "" {
		scopeText = h
	} else if q := r.URL.Query().Get("scope"); q != "" && scopeText == "" {
		scopeText = q
	}
	req.explicit = scopeText != ""
	if scopeText == "" {
		scopeText = svc.DefaultScope
	}
	if scopeText == "" {
		scopeText = f.cfg.Membership.Site()
	}
	if req.scope, req.canon, err = f.scopes.parse(scopeText); err != nil {
		return nil, http.StatusBadRequest, "bad_scope", err
	}
	if n := len(req.scopeText()); n > MaxScopeBytes {
		return nil, http.StatusRequestHeaderFieldsTooLarge, "scope_too_large",
			fmt.Errorf("scope of %d bytes (canonical) is over the limit of %d passed to applications", n, MaxScopeBytes)
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && streamsBody(req) {
		if r.ContentLength > f.cfg.MaxBody {
			// Refused before a byte of it is sent anywhere.
			return nil, http.StatusRequestEntityTooLarge, "too_large", fmt.Errorf("body over the limit of %d bytes", f.cfg.MaxBody)
		}
		req.stream = http.MaxBytesReader(w, r.Body, f.cfg.MaxBody)
	} else if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		req.body, err = readLimited(http.MaxBytesReader(w, r.Body, f.cfg.MaxBody), f.cfg.MaxBody)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) || strings.Contains(err.Error(), "larger than") {
				return nil, http.StatusRequestEntityTooLarge, "too_large", fmt.Errorf("body over the limit of %d bytes", f.cfg.MaxBody)
			}
			return nil, http.StatusBadRequest, "bad_body", fmt.Errorf("read body: %v", err)
		}
	}
	if err := checkJSON(r.Header.Get("Content-Type"), req.body); err != nil {
		return nil, http.StatusBadRequest, "bad_json", err
	}
	return req, 0, "", nil
}

// scopeCache keeps the scopes requests carried, parsed, by their text:
// a client sends the same few scopes again and again, and parsing one
// and printing it in canonical form cost the local hop more than
// planning it. The cached *scope.Scope is shared by every request that
// carried the text, so nothing may change it (nothing does: planning is
// a pure function of it). Only texts up to scopeCacheText bytes are kept,
// up to scopeCacheMax of them; past that, scopes are parsed each time.
type scopeCache struct {
	m sync.Map // text → parsedScope
	n atomic.Int64
}

type parsedScope struct {
	s     *scope.Scope
	canon string
}

const (
	scopeCacheMax  = 1024
	scopeCacheText = 1 << 10
)

// parse returns the scope of text and its canonical form.
func (c *scopeCache) parse(text string) (*scope.Scope, string, error) {
	if v, ok := c.m.Load(text); ok {
		p := v.(parsedScope)
		return p.s, p.canon, nil
	}
	s, err := scope.Parse(text)
	if err != nil {
		return nil, "", err
	}
	p := parsedScope{s: s, canon: s.String()}
	if len(text) <= scopeCacheText && c.n.Load() < scopeCacheMax {
		if _, loaded := c.m.LoadOrStore(text, p); !loaded {
			c.n.Add(1)
		}
	}
	return p.s, p.canon, nil
}

// streamsBody reports a request whose body is passed on as it arrives,
// never held: a PUT of a default service's path that names no item (no
// resource, so nothing is recorded: the body goes to the application
// and nowhere else) in a content type other than JSON (which the agent
// checks). A 100 MiB upload to such a path costs the agent a buffer.
func streamsBody(req *request) bool {
	if req.r.Method != http.MethodPut || req.svc.Routes != nil || req.route.id != "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(req.r.Header.Get("Content-Type"))
	return err == nil && mt != "application/json"
}

// readStream reads a streamed body (bounded by MaxBody) when the request
// needs it whole after all.
func (f *Forwarder) readStream(req *request) error {
	if req.stream == nil {
		return nil
	}
	b, err := readLimited(req.stream, f.cfg.MaxBody)
	req.stream = nil
	if err != nil {
		return err
	}
	req.body = b
	return nil
}

// bodyReader is what a request to an application or a site sends: the
// streamed body, else the one read.
func (req *request) bodyReader() (io.Reader, int64) {
	if req.stream != nil {
		return req.stream, req.r.ContentLength
	}
	return bytes.NewReader(req.body), int64(len(req.body))
}

// scopeText is the request's scope in canonical form, as every site and
// application gets it; computed once.
func (req *request) scopeText() string {
	if req.canon == "" {
		req.canon = req.scope.String()
	}
	return req.canon
}

func (f *Forwarder) serviceNames() string {
	var names []string
	for n := range f.services {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "no service"
	}
	return strings.Join(names, ", ")
}

// unreachableError lists why no site of a scope can run a request.
type unreachableError struct{ reasons []string }

func (e *unreachableError) Error() string {
	return "no site reachable: " + strings.Join(e.reasons, "; ")
}

// plan places the request. A request without a scope has the service's
// default scope, else the local site (parse); a scope the client gave must
// bind the service (scope.UnboundError), and a default scope that binds
// other services only places it on the local site.
//
// The sites the request fell back from (fallback.go) count as down.
func (f *Forwarder) plan(req *request) (*scope.Plan, error) {
	return f.planIn(req, withDown(f.cfg.Membership.View(), req.failedSites()))
}

// planIn is plan over a given view.
func (f *Forwarder) planIn(req *request, view scope.View) (*scope.Plan, error) {
	p, err := req.scope.Plan(req.svc.Name, view)
	if errors.Is(err, scope.ErrNoBinding) && !req.explicit {
		s := &scope.Scope{Bindings: []scope.Binding{{Expr: scope.Site{Name: view.Local}}}}
		p, err = s.Plan(req.svc.Name, view)
	}
	if errors.Is(err, scope.ErrUnreachable) {
		var reasons []string
		for _, a := range p.Alternatives {
			reasons = append(reasons, a.Expr+": "+a.Reason)
		}
		for _, x := range p.Excluded {
			reasons = append(reasons, x.Site+": "+x.Reason)
		}
		return nil, &unreachableError{reasons: reasons}
	}
	return p, err
}

// result is the outcome of a request on one site.
type result struct {
	site   string
	status int
	header http.Header
	body   []byte
	err    error
	// For an operation run by a site's executor: its outcome there (a
	// status, or superseded) and the local id of a created resource.
	outcomeText string
	localID     string
}

func (r result) ok() bool { return r.err == nil && r.status >= 200 && r.status < 300 }

func (r result) outcome() string {
	switch {
	case r.err != nil:
		return catalog.OutcomePending
	case r.outcomeText != "":
		return r.outcomeText
	}
	return strconv.Itoa(r.status)
}

// execute runs method path on one site: the local application, or another
// site's agent.
func (f *Forwarder) execute(ctx context.Context, site string, req *request, method, path string, extra http.Header) result {
	if site == f.cfg.Membership.Site() {
		return f.showHere(req, method, f.callApp(ctx, req, method, path, extra))
	}
	u := "http://cheops/svc/" + req.svc.Name + path
	in, n := req.bodyReader()
	out, err := http.NewRequestWithContext(ctx, method, u, in)
	if err != nil {
		return result{site: site, err: err}
	}
	if n > 0 {
		out.ContentLength = n
	}
	copyHeaders(out.Header, req.r.Header)
	// Only the extra headers may ask for a coordinator: a coordinator's own
	// fan-out must execute at each site, never coordinate again.
	out.Header.Del(HeaderCoordinate)
	for k, v := range extra {
		out.Header[k] = v
	}
	out.Header.Set(HeaderScope, req.scopeText())
	out.Header.Set(HeaderHop, f.cfg.Membership.Site())
	if failed := req.failedSites(); len(failed) > 0 {
		out.Header.Set(HeaderAvoid, strings.Join(failed, ","))
	}
	resp, body, err := f.sendRemote(ctx, site, out, f.cfg.MaxBody)
	if err != nil {
		return result{site: site, err: err}
	}
	r := result{site: site, status: resp.StatusCode, header: resp.Header, body: body,
		outcomeText: resp.Header.Get(HeaderOutcome), localID: resp.Header.Get(HeaderLocalID)}
	if r.outcomeText == catalog.OutcomePending {
		r.err = fmt.Errorf("site %s: cannot run it yet: %s", site, body)
	} else if r.outcomeText == "failed" {
		r.outcomeText = strconv.Itoa(r.status)
	}
	r.header.Del(HeaderOutcome)
	r.header.Del(HeaderLocalID)
	return r
}

// callApp runs a request on this site's application instance.
func (f *Forwarder) callApp(ctx context.Context, req *request, method, path string, extra http.Header) result {
	self := f.cfg.Membership.Site()
	out, err := f.appRequest(ctx, req, method, path, extra)
	if err != nil {
		return result{site: self, err: err}
	}
	resp, err := f.clientOf(req.svc, false).Do(out)
	if err != nil {
		return result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body, f.cfg.MaxBody)
	if err != nil {
		return result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}
	}
	return result{site: self, status: resp.StatusCode, header: resp.Header, body: body}
}

// appRequest is the request callApp sends to this site's application:
// method path with the request's body, the client's headers but
// hop-by-hop and cheops' own ones, extra's, the canonical scope and the
// application's credentials.
func (f *Forwarder) appRequest(ctx context.Context, req *request, method, path string, extra http.Header) (*http.Request, error) {
	target := strings.TrimRight(req.svc.URL.String(), "/") + path
	in, n := req.bodyReader()
	out, err := http.NewRequestWithContext(ctx, method, target, in)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		out.Body, out.ContentLength = io.NopCloser(in), n
	}
	appHeaderCopy(out.Header, req.r.Header)
	for k, v := range extra {
		if !isCheopsHeader(k) {
			out.Header[k] = v
		}
	}
	out.Header.Set(HeaderScope, req.scopeText())
	if n == 0 {
		out.Body, out.ContentLength = http.NoBody, 0
	}
	f.prepareUpstream(req.svc, out)
	return out, nil
}

// executeLocal runs a request another agent sent on this site's
// application, translating a global id in the path to the local one.
func (f *Forwarder) executeLocal(ctx context.Context, req *request) result {
	path, unknown := f.localPath(ctx, req)
	if unknown != nil {
		return *unknown
	}
	return f.showHere(req, req.r.Method, f.callApp(ctx, req, req.r.Method, path, nil))
}

// localPath is the path of a request another agent sent, on this site's
// application: a global id in it becomes the local one (unknown is the
// answer when this site holds no such resource).
func (f *Forwarder) localPath(ctx context.Context, req *request) (path string, unknown *result) {
	path = req.rawPath
	if id := req.route.id; id != "" && !req.route.named && catalog.ValidID(id) {
		res, ok := f.awaitResource(ctx, id)
		local := res.PerSite[f.cfg.Membership.Site()].LocalID
		if !ok || local == "" {
			r := unknownResource(f.cfg.Membership.Site(), id)
			return "", &r
		}
		path = withQuery(req.route.path(local), req.rawPath)
	}
	return path, nil
}

// serveLocal answers a request another agent sent with this site's
// application's answer: a read passed on as it arrives (readHere), any
// other request as executeLocal runs it.
func (f *Forwarder) serveLocal(w http.ResponseWriter, req *request) {
	if m := req.r.Method; m != http.MethodGet && m != http.MethodHead {
		f.reply(w, f.executeLocal(req.r.Context(), req), "", nil)
		return
	}
	path, unknown := f.localPath(req.r.Context(), req)
	if unknown != nil {
		f.reply(w, *unknown, "", nil)
		return
	}
	if err := f.readHere(w, req, path); err != nil {
		// The application could not be reached: the requester may read
		// from another site (readThere, execute).
		w.Header().Set(HeaderOutcome, catalog.OutcomePending)
		f.reply(w, result{site: f.cfg.Membership.Site(), err: err}, "", nil)
	}
}

// readHere answers a read (GET or HEAD) with this site's application's
// answer. What cheops must see or change goes through showHere: the
// application's 404 for an item, and a JSON answer to a GET of a default
// service (global ids shown), read whole (bounded by MaxBody). Anything
// else — a client-named service's answers, other content types,
// errors, HEAD — is streamed as it arrives, never held, and so not
// bounded by MaxBody. It returns an error, having written nothing, when
// the application could not be reached.
func (f *Forwarder) readHere(w http.ResponseWriter, req *request, path string) error {
	self := f.cfg.Membership.Site()
	method := req.r.Method
	out, err := http.NewRequestWithContext(req.r.Context(), method, strings.TrimRight(req.svc.URL.String(), "/")+path, http.NoBody)
	if err != nil {
		return err
	}
	if len(req.body) > 0 {
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(req.body)), int64(len(req.body))
	}
	appHeaderCopy(out.Header, req.r.Header)
	out.Header.Set(HeaderScope, req.scopeText())
	f.prepareUpstream(req.svc, out)
	var resp *http.Response
	if pool := f.reads[req.svc.Name]; pool != nil && len(req.body) == 0 {
		resp, err = pool.roundTrip(req.r.Context(), out)
	} else {
		// SiteTimeout bounds the answer until its head, as the pool
		// does; the body may take as long as the client reads it (an
		// image of any size).
		ctx, cancel := context.WithCancel(req.r.Context())
		defer cancel()
		late := time.AfterFunc(f.cfg.SiteTimeout, cancel)
		resp, err = f.clientOf(req.svc, true).Do(out.WithContext(ctx))
		if !late.Stop() && err == nil {
			resp.Body.Close()
			err = fmt.Errorf("no answer within %v", f.cfg.SiteTimeout)
		}
	}
	if err != nil {
		return fmt.Errorf("application of %s: %w", self, err)
	}
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	shown := req.svc.Routes == nil && ((resp.StatusCode == http.StatusNotFound && req.route.id != "" && req.route.rest == "" && !req.route.other) ||
		(method == http.MethodGet && resp.StatusCode >= 200 && resp.StatusCode < 300 && (ct == "" || strings.Contains(ct, "json"))))
	if shown {
		body, err := readBody(resp, f.cfg.MaxBody)
		res := result{site: self, status: resp.StatusCode, header: resp.Header, body: body}
		if err != nil {
			res = result{site: self, err: fmt.Errorf("application of %s: %w", self, err)}
		}
		f.reply(w, f.showHere(req, method, res), "", nil)
		return nil
	}
	h := w.Header()
	for k, v := range resp.Header {
		if !hopByHopSet[k] {
			h[k] = v
		}
	}
	h.Set(HeaderSite, self)
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	if method != http.MethodHead {
		_ = copyAnswer(w, resp.Body)
	}
	return nil
}

// copyAnswer streams an application's answer body to w: in the kernel
// when both ends are TCP connections (appBody.spliceTo), through a
// pooled buffer otherwise.
func copyAnswer(w io.Writer, body io.Reader) error {
	if ab, ok := body.(*appBody); ok {
		if moved, err := ab.spliceTo(w); moved {
			return err
		}
	}
	return copyBody(w, body)
}

// readBody reads an answer's body whole, bounded by limit, in one
// allocation when its length is known.
func readBody(resp *http.Response, limit int64) ([]byte, error) {
	if n := resp.ContentLength; n >= 0 && n <= limit {
		b := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return readLimited(resp.Body, limit)
}

// copyBuffers are the buffers bodies are streamed through.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody streams src to w through a pooled buffer.
func copyBody(w io.Writer, src io.Reader) error {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	_, err := io.CopyBuffer(w, src, *buf)
	return err
}

// ResourceWait bounds how long a request naming a global id this site
// does not know waits for the catalog entry to arrive (a resource created
// through another site a moment ago): 300 ms covers a replication round
// trip on a loaded LAN; past it the answer is cheops' 404.
const ResourceWait = 300 * time.Millisecond

// awaitResource returns a resource this site holds, waiting up to
// ResourceWait for its catalog entry.
func (f *Forwarder) awaitResource(ctx context.Context, id string) (catalog.Resource, bool) {
	deadline := time.Now().Add(ResourceWait)
	for {
		res, err := f.cfg.Catalog.Get(ctx, id)
		if err == nil {
			return res, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return catalog.Resource{}, false
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// unknownResource is cheops' answer for a global id that no catalog entry
// of this site names: never the application's, which would be asked for
// an id it does not know.
func unknownResource(site, id string) result {
	body, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("no resource %s is known at %s", id, site), "code": "unknown_resource"})
	return result{site: site, status: http.StatusNotFound, header: http.Header{"Content-Type": {"application/json"}}, body: body}
}

func withQuery(path, raw string) string {
	if _, q, ok := strings.Cut(raw, "?"); ok {
		return path + "?" + q
	}
	return path
}

// executeAll runs the request on several sites at once.
func (f *Forwarder) executeAll(ctx context.Context, sites []string, run func(ctx context.Context, site string) result) map[string]result {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := make(map[string]result, len(sites))
	for _, s := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := run(ctx, s)
			mu.Lock()
			out[s] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// hopByHop headers are not forwarded (RFC 9110 §7.6.1).
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Accept-Encoding"}

// hopByHopSet holds hopByHop, for a lookup per header.
var hopByHopSet = func() map[string]bool {
	m := map[string]bool{}
	for _, h := range hopByHop {
		m[h] = true
	}
	return m
}()

// appHeaderCopy copies src to a request to an application: the end-to-end
// headers but the agents' own (X-Cheops-*), values shared, not copied
// (neither side changes them).
func appHeaderCopy(dst, src http.Header) {
	for k, v := range src {
		if hopByHopSet[http.CanonicalHeaderKey(k)] || isCheopsHeader(k) {
			continue
		}
		dst[k] = v
	}
}

func copyHeaders(dst, src http.Header) {
	for k, v := range src {
		dst[k] = append([]string(nil), v...)
	}
	for _, h := range hopByHop {
		dst.Del(h)
	}
}

// sitesHeader formats per-site outcomes: "berlin=pending, paris=201".
func sitesHeader(outcomes map[string]string) string {
	var parts []string
	for s, o := range outcomes {
		parts = append(parts, s+"="+o)
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// reply writes one site's answer, with cheops' headers.
func (f *Forwarder) reply(w http.ResponseWriter, res result, resource string, outcomes map[string]string) {
	if res.err != nil {
		errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, res.err.Error())
		return
	}
	h := w.Header()
	for k, v := range res.header {
		if !hopByHopSet[http.CanonicalHeaderKey(k)] {
			h[k] = v
		}
	}
	h.Set(HeaderSite, res.site)
	if resource != "" {
		w.Header().Set(HeaderResource, resource)
	}
	if outcomes != nil {
		w.Header().Set(HeaderSites, sitesHeader(outcomes))
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(res.body)))
	w.WriteHeader(res.status)
	_, _ = w.Write(res.body)
}

// preferred picks the answer to return: this site's, else the first
// successful one in site order, else the first failure.
func (f *Forwarder) preferred(results map[string]result) (result, bool) {
	self := f.cfg.Membership.Site()
	if r, ok := results[self]; ok && r.ok() {
		return r, true
	}
	var sites []string
	for s := range results {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	for _, s := range sites {
		if results[s].ok() {
			return results[s], true
		}
	}
	for _, s := range sites {
		if results[s].err == nil {
			return results[s], false
		}
	}
	if len(sites) > 0 {
		return results[sites[0]], false
	}
	return result{}, false
}

// ErrUnknownService is returned by Call for a service this agent
// does not serve.
var ErrUnknownService = errors.New("forward: unknown service")

// Call runs one request on this site's instance of a service
// (replica.App): path may carry a recorded content type; header holds a
// live client's headers.
//
// callApp builds the request to the application; the one given to it
// only carries the headers (no URL to parse), and its scope, this site
// alone, is given as its canonical text, the site's name (ownScope),
// rather than built and printed for every call.
func (f *Forwarder) Call(ctx context.Context, service, method, path string, header http.Header, body []byte) (replica.Answer, error) {
	svc, ok := f.services[service]
	if !ok {
		return replica.Answer{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	h := make(http.Header, len(header)+1)
	for k, v := range header {
		h[k] = v
	}
	path, contentType := splitOpPath(path)
	if h.Get("Content-Type") == "" || contentType != "application/json" {
		h.Set("Content-Type", contentType)
	}
	req := &request{r: &http.Request{Method: method, Header: h}, svc: svc, body: body, canon: ownScope(f.cfg.Membership.Site())}
	var res result
	if pool := f.reads[service]; pool != nil {
		res = f.callPooled(ctx, pool, req, method, path)
	} else {
		res = f.callApp(ctx, req, method, path, nil)
	}
	return replica.Answer{Status: res.status, Header: res.header, Body: res.body}, res.err
}

// ownScope is the canonical text of the scope that names one site
// alone: the site's name (TestOwnScope holds it to scope's printing).
func ownScope(site string) string { return site }

// LocalID reads the id a service's application gave a resource it
// created in collection (replica.App).
func (f *Forwarder) LocalID(service, collection string, body []byte) (string, bool) {
	svc, ok := f.services[service]
	if !ok {
		return "", false
	}
	return svc.createdID(svc.routeOf(collection), body)
}
