package agent

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cheops/agent/ui"
	"cheops/catalog"
	"cheops/crdt"
	"cheops/errcode"
	"cheops/forward"
	"cheops/forward/glance"
	"cheops/node"
	"cheops/replica"
)

// DefaultAPI is where the agent's HTTP API listens unless told otherwise.
const DefaultAPI = "127.0.0.1:7070"

// Files the agent writes into its data directory for scripts and tools,
// and removes when it stops.
const (
	AddrsFile = "addrs" // listen multiaddrs with /p2p/, one per line
	APIFile   = "api"   // the API's base URL
)

// Config describes a site agent.
type Config struct {
	Node node.Config
	// API is the host:port of the HTTP API. Default 127.0.0.1:7070:
	// loopback, because the API is for the site's users and operators and
	// carries no authentication of its own. Port 0 picks a free port (see
	// Agent.URL and the APIFile).
	API string
	// Services are the site's applications (--service NAME=URL and the
	// flags that qualify one: --service-kind, --policy, --service-token,
	// --service-ca, --service-insecure), handed as they are to the
	// forwarder. Validate checks them (forward.CheckServices).
	Services []forward.Service
	// Handlers are extra routes (http.ServeMux patterns, e.g.
	// "GET /v1/resources/{id}") mounted before the API starts serving.
	Handlers map[string]http.Handler
	// Scopes names scopes (--scope-name NAME=SCOPE): /s/NAME/svc/… runs
	// with the scope NAME stands for. These names are fixed; the API
	// defines others (PUT /v1/scopes/{name}), kept in DATA/scopes.json.
	// Names are resolved by this agent alone (see scopes.go).
	Scopes map[string]string
	// APIToken, when set, is the bearer token every API request but
	// GET /v1/health must carry (Authorization: Bearer …, or ?token= for
	// browsers, whose event streams cannot set headers).
	APIToken string
	// ReplicaWait, when positive, is how long a replicated write waits
	// for its replicas before answering with the late ones pending
	// (default: forward.DefaultMinReplicaWait or 4 RTT, whichever is
	// longer).
	ReplicaWait time.Duration
	// MaxBody bounds request bodies forwarded to applications
	// (forward.DefaultMaxBody, 16 MiB, when 0).
	MaxBody int64
	// ShutdownTimeout is how long Close lets requests in flight finish. 5 s:
	// API calls are short; a stuck one must not hold a restart.
	ShutdownTimeout time.Duration
	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns an agent configuration with the node's WAN
// defaults; the site, data directory and trust list are left to fill.
func DefaultConfig() Config {
	return Config{Node: node.DefaultConfig(), API: DefaultAPI, ShutdownTimeout: 5 * time.Second}
}

// ErrBadConfig wraps every problem Validate finds outside the node's own
// configuration (which wraps node.ErrBadConfig or node.ErrNoTrust).
var ErrBadConfig = errors.New("agent: bad configuration")

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if err := c.Node.Validate(); err != nil {
		return err
	}
	if _, port, err := net.SplitHostPort(c.API); err != nil || port == "" {
		return fmt.Errorf("%w: API address %q: want HOST:PORT", ErrBadConfig, c.API)
	}
	if err := forward.CheckServices(c.Services); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	for name, text := range c.Scopes {
		if _, err := canonicalNamed(name, text); err != nil {
			return fmt.Errorf("%w: %v", ErrBadConfig, err)
		}
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("%w: shutdown timeout must be positive", ErrBadConfig)
	}
	return nil
}

// apiReadHeaderTimeout bounds the reading of a request's head on the
// API (net/http's server and the fast path): 10 s, for a slow client on
// a WAN; tests lower it.
var apiReadHeaderTimeout = 10 * time.Second

// FastReads is the number of reads the API served on its fast path
// (forward.FastPath).
func (a *Agent) FastReads() int64 { return a.fast.Served() }

// Agent is a running site agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	node    *node.Node
	store   *pebbleds.Datastore
	crdt    *crdt.Manager
	catalog *catalog.Catalog
	forward *forward.Forwarder
	// front serves /svc/, /scope/ and /s/: the forwarder, behind the
	// image-data path of each Glance service.
	front   http.Handler
	data    []*glance.Data
	catchup *replica.Runner
	scopes  *namedScopes
	mux     *http.ServeMux
	srv     *http.Server
	fast    *forward.FastPath
	ln      net.Listener
	done    chan error
	once    sync.Once
	err     error
}

// Start validates cfg, binds the API, brings up the node, the datastore,
// the replication groups and the catalog, and serves the HTTP API. ctx
// bounds the start only; the agent runs until Close.
func Start(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.API == "" {
		cfg.API = DefaultAPI
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultConfig().ShutdownTimeout
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg.Node.Logger = log
	// Bind the API before starting anything: a port in use is the most
	// likely start failure and costs nothing to find out.
	ln, err := net.Listen("tcp", cfg.API)
	if err != nil {
		return nil, fmt.Errorf("agent: API listen on %s: %w", cfg.API, err)
	}
	a := &Agent{
		cfg: cfg, log: log.With("component", "agent", "site", cfg.Node.Site),
		mux: http.NewServeMux(), ln: ln, done: make(chan error, 1),
	}
	if err := a.open(ctx); err != nil {
		ln.Close()
		a.closeParts()
		return nil, err
	}
	reg := a.node.Registry()
	// Process and runtime metrics beside the node's and libp2p's. A
	// registry given by the caller may have them already.
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.routes()
	for pattern, h := range cfg.Handlers {
		a.mux.Handle(pattern, h)
	}
	a.srv = &http.Server{
		Handler:           requireToken(cfg.APIToken, a.mux),
		ReadHeaderTimeout: apiReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	// Plain local reads are served on the fast path's own connection
	// loop; every other request, on a connection handed over, by
	// a.srv, whose own answers to malformed requests become cheops JSON
	// (the fast path wraps them as forward.ErrorListener does).
	a.fast = forward.ServeFast(ln, forward.FastConfig{Forwarder: a.forward, Take: a.takesFast,
		ReadHeaderTimeout: a.srv.ReadHeaderTimeout, IdleTimeout: a.srv.IdleTimeout, Logger: a.log})
	a.srv.ConnContext = a.fast.ConnContext
	go func() { a.done <- a.srv.Serve(a.fast) }()
	fast := a.fast
	_ = reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "cheops_api_fast_reads_total",
		Help: "Reads the API served on its fast path (plain reads placed on one site, this one or another, in front of net/http's server)."},
		func() float64 { return float64(fast.Served()) }))
	if err := a.writeInfo(); err != nil {
		a.Close()
		return nil, err
	}
	a.log.Info("agent started", "api", a.URL(), "peer", a.node.ID(), "addrs", a.node.Addrs())
	return a, nil
}

// StoreDir is the datastore's directory inside the data directory.
const StoreDir = "store"

// open starts the node and the datastore together, then the replication
// groups and the catalog.
//
// The datastore (pebble, 4-10 ms) opens while the node starts: opened
// after it, the groups served their protocols only once the host had
// connected to its members, and a member that opened a link to this site
// meanwhile was refused and joined it to their shared group 20-25 ms
// later (a returning site's first owed operation came that much later).
// The data directory is made as the node makes it (0700) before either
// starts; the node's lock still decides which of two agents on one
// directory runs (pebble's own lock keeps the other out of the store).
func (a *Agent) open(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.Node.DataDir, 0o700); err != nil {
		return fmt.Errorf("agent: data directory: %w", err)
	}
	type opened struct {
		store *pebbleds.Datastore
		err   error
	}
	storeDone := make(chan opened, 1)
	go func() {
		store, err := crdt.OpenStore(filepath.Join(a.cfg.Node.DataDir, StoreDir))
		storeDone <- opened{store, err}
	}()
	nodeCfg := a.cfg.Node
	nodeCfg.Protocols = crdt.Protocols // served once the crdt manager starts, below
	n, err := node.New(ctx, nodeCfg)
	o := <-storeDone
	if err != nil {
		if o.err == nil {
			o.store.Close()
		}
		return err
	}
	a.node = n
	if o.err != nil {
		return o.err
	}
	a.store = o.store
	cc := crdt.DefaultConfig()
	cc.Host, cc.Datastore, cc.Self, cc.Resolve = n.Host(), a.store, n.Site(), n.PeerOf
	cc.Registerer, cc.Logger = n.Registry(), a.cfg.Logger
	if a.crdt, err = crdt.NewManager(ctx, cc); err != nil {
		return err
	}
	if a.crdt.Unclean() {
		a.log.Warn("the previous run did not stop cleanly; replication groups were repaired")
	}
	if a.catalog, err = catalog.New(ctx, catalog.Config{Store: a.crdt, Self: n.Site(), Logger: a.cfg.Logger}); err != nil {
		return err
	}
	cat := a.catalog
	if err := n.Registry().Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "cheops_catalog_view_repairs_total",
		Help: "Resources whose catalog view the audit corrected from the store (changes the view had missed)."},
		func() float64 { return float64(cat.AuditRepairs()) })); err != nil {
		return fmt.Errorf("agent: metrics: %w", err)
	}
	for name, f := range map[string]func() int64{
		"cheops_catalog_audit_applied_total": cat.AuditApplied,
		"cheops_catalog_audit_late_total":    cat.AuditLate,
	} {
		help := "Values the catalog audit applied to the view."
		if name == "cheops_catalog_audit_late_total" {
			help = "Values the audit applied whose change notice arrived afterwards (the view was behind, not missing them)."
		}
		if err := n.Registry().Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f()) })); err != nil {
			return fmt.Errorf("agent: metrics: %w", err)
		}
	}
	services := make([]forward.Service, len(a.cfg.Services))
	for i, svc := range a.cfg.Services {
		services[i] = withRoutes(svc)
	}
	if a.scopes, err = loadNamedScopes(filepath.Join(a.cfg.Node.DataDir, ScopesFile), a.cfg.Scopes); err != nil {
		return err
	}
	a.forward, err = forward.New(forward.Config{Host: n.Host(), Membership: n, Catalog: a.catalog,
		Services: services, MaxBody: a.cfg.MaxBody, Journal: a.store, ReplicaWait: a.cfg.ReplicaWait,
		Registerer: n.Registry(), Logger: a.cfg.Logger})
	if err != nil {
		return err
	}
	a.front = a.forward
	for _, svc := range services {
		if svc.Kind != forward.KindGlance {
			continue
		}
		d, err := glance.NewData(glance.DataConfig{Service: svc.Name, URL: svc.URL, TLS: svc.Upstream.TLS, Host: n.Host(), Membership: n,
			Catalog: a.catalog, Next: a.front, Logger: a.cfg.Logger})
		if err != nil {
			return err
		}
		a.data = append(a.data, d)
		a.front = d
	}
	// Owed operations wait (bounded) while the catalog merges blocks
	// from members, so that the merge has the CPU.
	a.catchup, err = replica.StartRunner(replica.RunnerConfig{Catalog: a.catalog, Executor: a.forward.Executor(),
		Merging: a.crdt.Merging, Logger: a.cfg.Logger})
	return err
}

// closeParts stops what open started, in reverse order.
func (a *Agent) closeParts() error {
	var errs []error
	if a.catchup != nil {
		a.catchup.Close()
	}
	for _, d := range a.data {
		d.Close()
	}
	if a.forward != nil {
		a.forward.Close()
	}
	if a.catalog != nil {
		a.catalog.Close()
	}
	if a.crdt != nil {
		errs = append(errs, a.crdt.Close())
	}
	if a.node != nil {
		errs = append(errs, a.node.Close())
	}
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	return errors.Join(errs...)
}

// Catalog is the agent's catalog.
func (a *Agent) Catalog() *catalog.Catalog { return a.catalog }

// writeInfo leaves the API URL and listen addresses in the data directory.
func (a *Agent) writeInfo() error {
	dir := a.cfg.Node.DataDir
	if err := writeFileAtomic(filepath.Join(dir, AddrsFile), []byte(strings.Join(a.node.Addrs(), "\n")+"\n")); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, APIFile), []byte(a.URL()+"\n")); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// writeFileAtomic writes through a rename so that a script polling for
// the file never reads half of it.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Node is the agent's libp2p node.
func (a *Agent) Node() *node.Node { return a.node }

// Services are the configured services.
func (a *Agent) Services() []forward.Service { return a.cfg.Services }

// URL is the base URL of the HTTP API.
func (a *Agent) URL() string { return "http://" + a.ln.Addr().String() }

// Mux is the API's router. Mount routes with Handle or Mux().Handle at any
// time (http.ServeMux is safe for that); "/" is taken by the JSON 404.
func (a *Agent) Mux() *http.ServeMux { return a.mux }

// Handle mounts an extra handler on the API (patterns as http.ServeMux).
func (a *Agent) Handle(pattern string, h http.Handler) { a.mux.Handle(pattern, h) }

// Wait blocks until ctx ends or the API server fails.
func (a *Agent) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-a.done:
		a.done <- err // for Close
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("agent: API server: %w", err)
	}
}

// Close shuts down in order: the API (letting requests in flight finish
// for ShutdownTimeout), the catalog, the replication groups (which record a
// clean shutdown), the node (pubsub, host, data directory lock) and the
// datastore, and removes the files writeInfo left. It waits for every goroutine the
// agent started.
func (a *Agent) Close() error {
	a.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		if err := a.srv.Shutdown(ctx); err != nil {
			a.log.Warn("API shutdown", "err", err)
			a.srv.Close()
		}
		if err := a.fast.Shutdown(ctx); err != nil {
			a.log.Warn("API fast path shutdown", "err", err)
		}
		<-a.done
		a.err = a.closeParts()
		for _, f := range []string{AddrsFile, APIFile} {
			os.Remove(filepath.Join(a.cfg.Node.DataDir, f))
		}
		a.log.Info("agent stopped")
	})
	return a.err
}

func (a *Agent) routes() {
	a.mux.HandleFunc("GET /v1/health", a.health)
	a.mux.HandleFunc("GET /v1/sites", a.sites)
	a.mux.HandleFunc("POST /v1/sites/{site}/forget", a.forget)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(a.node.Registry(), promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}))
	a.mux.Handle("GET /{$}", ui.Handler())
	moves := a.forward.ResourceHandler()
	a.mux.Handle("POST /v1/resources/{id}/attach", moves)
	a.mux.Handle("POST /v1/resources/{id}/detach", moves)
	a.mux.Handle("/svc/", a.front)
	a.mux.Handle("/scope/", a.front)
	a.mux.HandleFunc("/s/", a.serveNamed)
	a.mux.HandleFunc("GET /v1/scopes", a.listScopes)
	a.mux.HandleFunc("PUT /v1/scopes/{name}", a.defineScope)
	a.mux.HandleFunc("DELETE /v1/scopes/{name}", a.undefineScope)
	catalogAPI := catalog.Handler(a.catalog)
	a.mux.Handle("GET /v1/resources", catalogAPI)
	a.mux.Handle("GET /v1/resources/{id}", catalogAPI)
	a.mux.Handle("GET /v1/watch", catalogAPI)
	a.mux.HandleFunc("GET /v1/catalog/status", a.catalogStatus)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		errcode.Write(w, http.StatusNotFound, errcode.NotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
}

// takesFast reports a request the fast path may serve: one the API's
// router hands to the forwarder itself (no Glance image-data path in
// front of it) and that carries the API's token.
func (a *Agent) takesFast(r *http.Request) bool {
	if len(a.data) > 0 || !hasToken(a.cfg.APIToken, r) {
		return false
	}
	// The router redirects a path that is not clean (cleanPath, as
	// http.ServeMux's): only clean ones are taken.
	if p := r.URL.Path; cleanPath(p) != p || cleanPath(r.URL.EscapedPath()) != r.URL.EscapedPath() {
		return false
	}
	_, pattern := a.mux.Handler(r)
	return pattern == "/svc/" || pattern == "/scope/"
}

// cleanPath is p as http.ServeMux would redirect it: rooted, with no
// "." or ".." element or double slash, its trailing slash kept.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		return ""
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// hasToken reports whether r carries the API's bearer token (any
// request does when there is none).
func hasToken(token string, r *http.Request) bool {
	if token == "" {
		return true
	}
	got := []byte(r.Header.Get("Authorization"))
	if q := r.URL.Query().Get("token"); q != "" && len(got) == 0 {
		got = []byte("Bearer " + q)
	}
	return subtle.ConstantTimeCompare(got, []byte("Bearer "+token)) == 1
}

// requireToken guards the API with a bearer token when one is set.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health" || hasToken(token, r) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="cheops"`)
		errcode.Write(w, http.StatusUnauthorized, errcode.Unauthorized, "this agent's API needs its bearer token (Authorization: Bearer …)")
	})
}
