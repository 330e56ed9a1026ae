package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"cheops/agent"
	"cheops/forward"
	"cheops/node"
	"cheops/scope"
)

func init() {
	def := agent.DefaultConfig()
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "JSON `FILE` whose keys are these flags' names (lists for repeatable flags); the command line and environment win", EnvVars: []string{"CHEOPS_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "site", Usage: "this site's `NAME`, as scopes spell it (required)", EnvVars: []string{"CHEOPS_SITE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data", Usage: "data `DIR`: identity key, catalog (required; created if missing)", EnvVars: []string{"CHEOPS_DATA"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "listen", Usage: "libp2p listen `MULTIADDR` (repeatable)", EnvVars: []string{"CHEOPS_LISTEN"},
			Value: cli.NewStringSlice(def.Node.Listen...)}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "announce", Usage: "`MULTIADDR` to advertise instead of the listen ones, e.g. behind NAT (repeatable)", EnvVars: []string{"CHEOPS_ANNOUNCE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api", Usage: "`HOST:PORT` of the HTTP API", Value: def.API, EnvVars: []string{"CHEOPS_API"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-token-file", Usage: "file holding a bearer token the API will require (clients set CHEOPS_API_TOKEN)", EnvVars: []string{"CHEOPS_API_TOKEN_FILE"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "peer", Usage: "bootstrap `MULTIADDR` ending in /p2p/PEERID (repeatable)", EnvVars: []string{"CHEOPS_PEER"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "trust", Usage: "`[NAME=]PEERID` allowed to connect; with NAME, the only peer that may act as site NAME (repeatable)", EnvVars: []string{"CHEOPS_TRUST"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "trust-file", Usage: "`FILE` of trusted peers, one per line: 'NAME PEERID' (binds the site name) or 'PEERID'; # comments", EnvVars: []string{"CHEOPS_TRUST_FILE"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "trust-all", Usage: "accept any peer (closed test networks only)", EnvVars: []string{"CHEOPS_TRUST_ALL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "swarm-key", Usage: "libp2p private network key `FILE` (turns QUIC off: TCP only)", EnvVars: []string{"CHEOPS_SWARM_KEY"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "service", Usage: "`NAME=URL` of this site's instance of an application (repeatable)", EnvVars: []string{"CHEOPS_SERVICE"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "service-kind", Usage: "`NAME=KIND` of a service: rest (default), kube (a Kubernetes API server; see docs/kubernetes.md) or glance (OpenStack Glance; see docs/openstack.md) (repeatable)", EnvVars: []string{"CHEOPS_SERVICE_KIND"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "service-token", Usage: "`NAME=FILE`: send the bearer token in FILE to this site's instance of the service (repeatable)", EnvVars: []string{"CHEOPS_SERVICE_TOKEN"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "service-ca", Usage: "`NAME=FILE`: PEM certificates to verify the service's HTTPS upstream with (repeatable)", EnvVars: []string{"CHEOPS_SERVICE_CA"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "service-insecure", Usage: "service `NAME` whose HTTPS certificate is not verified (self-signed test clusters; repeatable)", EnvVars: []string{"CHEOPS_SERVICE_INSECURE"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "scope-name", Usage: "`NAME=SCOPE`: /s/NAME/svc/… runs with SCOPE, for clients that take only a base URL (repeatable; cheops scope define adds names at run time)", EnvVars: []string{"CHEOPS_SCOPE_NAME"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "probe-interval", Usage: "how often every site is pinged", Value: def.Node.ProbeInterval, EnvVars: []string{"CHEOPS_PROBE_INTERVAL"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "policy", Usage: "`SERVICE:METHOD=POLICY` consistency of a service's updates: replace, commute or ordered (repeatable; default PUT=replace, others ordered)", EnvVars: []string{"CHEOPS_POLICY"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "replica-wait", Usage: "how long a replicated write waits for its replicas before answering with the late ones pending (0: max(50ms, 4 × RTT); a request can set X-Cheops-Replica-Wait)", EnvVars: []string{"CHEOPS_REPLICA_WAIT"}}),
		altsrc.NewInt64Flag(&cli.Int64Flag{Name: "max-body", Usage: "largest request body forwarded, in bytes (413 above)", Value: forward.DefaultMaxBody, EnvVars: []string{"CHEOPS_MAX_BODY"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "probe-timeout", Usage: "how long a ping may take", Value: def.Node.ProbeTimeout, EnvVars: []string{"CHEOPS_PROBE_TIMEOUT"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "suspect-after", Usage: "missed probes before a site is suspect", Value: def.Node.SuspectAfter, EnvVars: []string{"CHEOPS_SUSPECT_AFTER"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "down-after", Usage: "missed probes before a site is down", Value: def.Node.DownAfter, EnvVars: []string{"CHEOPS_DOWN_AFTER"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", Usage: "serve Go's profiles on the API under /debug/pprof/ (behind --api-token-file when set; for profiling, never on an open address)", EnvVars: []string{"CHEOPS_PPROF"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", Value: "info", EnvVars: []string{"CHEOPS_LOG_LEVEL"}}),
	}
	register(&cli.Command{
		Name:  "agent",
		Usage: "run this site's agent",
		Description: "Runs until SIGINT or SIGTERM, then stops cleanly. It prints its API URL and its\n" +
			"listen addresses (with /p2p/, for other sites' --peer) on stderr and writes them\n" +
			"to DIR/" + agent.APIFile + " and DIR/" + agent.AddrsFile + ".\n\n" +
			"Site names are bound to peer ids: by the trust configuration (--trust NAME=PEERID,\n" +
			"or a trust file line 'NAME PEERID'), else by the first peer that claims the name,\n" +
			"kept in DIR/" + node.BindingsFile + ". A peer claiming a name bound to another is refused\n" +
			"(see GET /v1/health); `cheops sites forget NAME` removes a first-claim binding.\n\n" +
			"It refuses to start (exit 1) when a --listen or --api address is taken.",
		Flags:  flags,
		Before: configFile(flags),
		Action: runAgent,
	})
}

// configFile reads --config into the flags not given on the command line
// or in the environment. A key that names no flag is an error, not a
// silent no-op: a typo in a config file must not drop a trust list.
func configFile(flags []cli.Flag) cli.BeforeFunc {
	load := altsrc.InitInputSourceWithContext(flags, altsrc.NewJSONSourceFromFlagFunc("config"))
	return func(c *cli.Context) error {
		path := c.String("config")
		if path == "" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return usageError("--config: %v", err)
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(data, &keys); err != nil {
			return usageError("--config %s: not a JSON object: %v", path, err)
		}
		var names []string
		for _, f := range flags {
			names = append(names, f.Names()...)
		}
		for k := range keys {
			if k == "config" || !slices.Contains(names, k) {
				return usageError("--config %s: unknown key %q (keys are the flag names: site, data, listen, peer, trust, …)", path, k)
			}
		}
		if err := load(c); err != nil {
			return usageError("--config %s: %v", path, err)
		}
		return nil
	}
}

func runAgent(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError("agent takes no arguments, got %q", c.Args().Slice())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return usageError("--log-level: %v", err)
	}
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))
	cfg, err := agentConfig(c)
	if err != nil {
		return usageError("%v", err)
	}
	cfg.Logger = log
	a, err := agent.Start(c.Context, cfg)
	if err != nil {
		if isBadInput(err) {
			return usageError("%v", err)
		}
		return failure("%v", err)
	}
	if c.Bool("pprof") {
		a.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		a.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		a.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
		log.Warn("serving Go's profiles on the API (--pprof)", "url", a.URL()+"/debug/pprof/")
	}
	fmt.Fprintf(c.App.ErrWriter, "cheops agent %s: peer %s, API %s\n", cfg.Node.Site, a.Node().ID(), a.URL())
	for _, addr := range a.Node().Addrs() {
		fmt.Fprintf(c.App.ErrWriter, "  listening on %s\n", addr)
	}
	waitErr := a.Wait(c.Context)
	log.Info("stopping")
	closeErr := a.Close()
	if waitErr != nil {
		return failure("%v", waitErr)
	}
	if closeErr != nil {
		return failure("%v", closeErr)
	}
	return nil
}

// isBadInput tells configuration and data-directory problems (exit 2) from
// failures of a well-configured agent (exit 1).
func isBadInput(err error) bool {
	for _, e := range []error{node.ErrBadConfig, node.ErrNoTrust, node.ErrDataDirInUse, node.ErrIdentity, agent.ErrBadConfig} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// agentConfig turns the flags into the agent's configuration.
func agentConfig(c *cli.Context) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	nc := &cfg.Node
	nc.Site = c.String("site")
	nc.DataDir = c.String("data")
	var err error
	if nc.Site == "" {
		return cfg, errors.New("--site is required: this site's name, as scopes spell it")
	}
	if err := scope.CheckName("site", nc.Site); err != nil {
		return cfg, fmt.Errorf("--site: %w", err)
	}
	if nc.DataDir == "" {
		return cfg, errors.New("--data is required: the directory that keeps this site's identity and catalog")
	}
	if err := os.MkdirAll(nc.DataDir, 0o700); err != nil {
		return cfg, fmt.Errorf("--data: %w", err)
	}
	f, err := os.CreateTemp(nc.DataDir, ".probe-*")
	if err != nil {
		return cfg, fmt.Errorf("--data %s is not writable: %w", nc.DataDir, err)
	}
	f.Close()
	os.Remove(f.Name())

	nc.Listen = c.StringSlice("listen")
	nc.Announce = c.StringSlice("announce")
	nc.Peers = c.StringSlice("peer")
	nc.TrustAll = c.Bool("trust-all")
	nc.ProbeInterval = c.Duration("probe-interval")
	nc.ProbeTimeout = c.Duration("probe-timeout")
	nc.SuspectAfter = c.Int("suspect-after")
	nc.DownAfter = c.Int("down-after")
	var entries []trustEntry
	for _, v := range c.StringSlice("trust") {
		e, err := parseTrust(v, "=")
		if err != nil {
			return cfg, fmt.Errorf("--trust %q: %w", v, err)
		}
		entries = append(entries, e)
	}
	if path := c.String("trust-file"); path != "" {
		fromFile, err := readTrustFile(path)
		if err != nil {
			return cfg, err
		}
		entries = append(entries, fromFile...)
	}
	if nc.Trust, nc.Sites, err = trustConfig(entries); err != nil {
		return cfg, err
	}
	if path := c.String("swarm-key"); path != "" {
		key, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("--swarm-key: %w", err)
		}
		nc.SwarmKey = key
	}
	cfg.API = c.String("api")
	if path := c.String("api-token-file"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("--api-token-file: %w", err)
		}
		if cfg.APIToken = strings.TrimSpace(string(data)); cfg.APIToken == "" {
			return cfg, fmt.Errorf("--api-token-file %s is empty", path)
		}
	}
	if cfg.Services, err = parseServices(c); err != nil {
		return cfg, err
	}
	for _, v := range c.StringSlice("scope-name") {
		name, text, err := agent.ParseScopeName(v)
		if err != nil {
			return cfg, fmt.Errorf("--scope-name: %w", err)
		}
		if cfg.Scopes == nil {
			cfg.Scopes = map[string]string{}
		}
		if _, dup := cfg.Scopes[name]; dup {
			return cfg, fmt.Errorf("--scope-name: %s given twice", name)
		}
		cfg.Scopes[name] = text
	}
	if cfg.ReplicaWait = c.Duration("replica-wait"); cfg.ReplicaWait < 0 {
		return cfg, fmt.Errorf("--replica-wait must not be negative, got %v", cfg.ReplicaWait)
	}
	if cfg.MaxBody = c.Int64("max-body"); cfg.MaxBody <= 0 {
		return cfg, fmt.Errorf("--max-body must be positive, got %d", cfg.MaxBody)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// trustEntry is one trusted peer, bound to a site name or not.
type trustEntry struct {
	site string // empty: trusted, name not bound by configuration
	peer peer.ID
	from string // where it was given, for error messages
}

// parseTrust reads PEERID or NAME<sep>PEERID (sep is "=" on the command
// line; white space in a trust file).
func parseTrust(v, sep string) (trustEntry, error) {
	name, id, bound := strings.Cut(v, sep)
	if !bound {
		name, id = "", v
	}
	name, id = strings.TrimSpace(name), strings.TrimSpace(id)
	if bound {
		if err := scope.CheckName("site", name); err != nil {
			return trustEntry{}, err
		}
	}
	p, err := peer.Decode(id)
	if err != nil {
		return trustEntry{}, fmt.Errorf("%q is not a peer id", id)
	}
	return trustEntry{site: name, peer: p}, nil
}

// readTrustFile reads trusted peers, one per line: PEERID, or NAME PEERID
// to bind the site name to the peer; blank lines and # comments are
// skipped.
func readTrustFile(path string) ([]trustEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--trust-file: %w", err)
	}
	var out []trustEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		var e trustEntry
		switch len(fields) {
		case 0:
			continue
		case 1:
			e, err = parseTrust(fields[0], " ")
		case 2:
			e, err = parseTrust(fields[0]+" "+fields[1], " ")
		default:
			err = fmt.Errorf("want PEERID or NAME PEERID, got %d fields", len(fields))
		}
		if err != nil {
			return nil, fmt.Errorf("--trust-file %s:%d: %w", path, n, err)
		}
		e.from = fmt.Sprintf("%s:%d", path, n)
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--trust-file %s: %w", path, err)
	}
	return out, nil
}

// trustConfig turns trust entries into the node's trust list and site
// bindings. A name bound to two peers, or a peer bound to two names, is
// an error: which one would be the site?
func trustConfig(entries []trustEntry) ([]peer.ID, map[string]peer.ID, error) {
	var trust []peer.ID
	var sites map[string]peer.ID
	names := map[peer.ID]string{}
	for _, e := range entries {
		if e.site == "" {
			trust = append(trust, e.peer)
			continue
		}
		at := ""
		if e.from != "" {
			at = " (" + e.from + ")"
		}
		if p, dup := sites[e.site]; dup && p != e.peer {
			return nil, nil, fmt.Errorf("trust: site %s bound to two peers, %s and %s%s", e.site, p, e.peer, at)
		}
		if other, dup := names[e.peer]; dup && other != e.site {
			return nil, nil, fmt.Errorf("trust: peer %s bound to two sites, %s and %s%s", e.peer, other, e.site, at)
		}
		if sites == nil {
			sites = map[string]peer.ID{}
		}
		sites[e.site], names[e.peer] = e.peer, e.site
	}
	return trust, sites, nil
}

// parseServices reads --service NAME=URL and the flags that qualify a
// service (--service-kind, --policy, --service-token, --service-ca,
// --service-insecure; each must name a --service) into the services the
// agent and its forwarder take as they are. Each service is checked here,
// once (forward.Service.Validate); a name given twice is an error.
func parseServices(c *cli.Context) ([]forward.Service, error) {
	var out []forward.Service
	index := map[string]int{}
	for _, p := range c.StringSlice("service") {
		svc, err := forward.ParseService(p)
		if err != nil {
			return nil, fmt.Errorf("--service: %w", err)
		}
		if _, dup := index[svc.Name]; dup {
			return nil, fmt.Errorf("--service %s given twice", svc.Name)
		}
		index[svc.Name] = len(out)
		out = append(out, svc)
	}
	// named returns the service a qualifying flag names.
	named := func(flag, arg, name string) (*forward.Service, error) {
		i, ok := index[name]
		if !ok {
			return nil, fmt.Errorf("--%s %s: no --service %s", flag, arg, name)
		}
		return &out[i], nil
	}
	pairs := func(flag string, set func(svc *forward.Service, v string) error) error {
		for _, p := range c.StringSlice(flag) {
			name, v, ok := strings.Cut(p, "=")
			if !ok || v == "" {
				return fmt.Errorf("--%s %q: want NAME=VALUE", flag, p)
			}
			svc, err := named(flag, p, name)
			if err != nil {
				return err
			}
			if err := set(svc, v); err != nil {
				return fmt.Errorf("--%s %s: %w", flag, name, err)
			}
		}
		return nil
	}
	if err := pairs("service-kind", func(svc *forward.Service, v string) error {
		svc.Kind = v
		return nil
	}); err != nil {
		return nil, err
	}
	for _, p := range c.StringSlice("policy") {
		name, method, policy, err := forward.ParsePolicy(p)
		if err != nil {
			return nil, fmt.Errorf("--policy: %w", err)
		}
		svc, err := named("policy", p, name)
		if err != nil {
			return nil, err
		}
		if svc.Policies == nil {
			svc.Policies = map[string]string{}
		}
		svc.Policies[method] = policy
	}
	if err := pairs("service-token", func(svc *forward.Service, v string) error {
		data, err := os.ReadFile(v)
		if err != nil {
			return err
		}
		if svc.Upstream.Token = strings.TrimSpace(string(data)); svc.Upstream.Token == "" {
			return fmt.Errorf("%s is empty", v)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	ca := map[string]string{}
	if err := pairs("service-ca", func(svc *forward.Service, v string) error {
		ca[svc.Name] = v
		return nil
	}); err != nil {
		return nil, err
	}
	insecure := map[string]bool{}
	for _, name := range c.StringSlice("service-insecure") {
		if _, err := named("service-insecure", name, name); err != nil {
			return nil, err
		}
		insecure[name] = true
	}
	for i := range out {
		svc := &out[i]
		if ca[svc.Name] != "" || insecure[svc.Name] {
			tlsCfg, err := forward.UpstreamTLS(ca[svc.Name], insecure[svc.Name])
			if err != nil {
				return nil, fmt.Errorf("--service-ca %s: %w", svc.Name, err)
			}
			svc.Upstream.TLS = tlsCfg
		}
		if err := svc.Validate(); err != nil {
			return nil, fmt.Errorf("--service %s: %w", svc.Name, err)
		}
	}
	return out, nil
}
