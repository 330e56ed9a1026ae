package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"cheops/bench/wan"
)

// Latency summarises the successful requests of one kind on one path, in
// milliseconds.
type Latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Mean float64 `json:"mean_ms"`
}

// PathFigures is what one way of reaching the application measured.
type PathFigures struct {
	// Path is "direct" (the application itself), "haproxy" (a plain
	// reverse proxy in front of it), "local agent" (the agent of the
	// application's site) or "remote agent" (the agent of another site,
	// one WAN hop away).
	Path string `json:"path"`
	// Get is GET of one item; GetAdded its p50 minus the direct p50 of
	// the same run.
	Get      Latency `json:"get"`
	GetAdded float64 `json:"get_added_p50_ms"`
	// Create is POST of a new item; CreateAdded as for Get.
	Create      Latency `json:"create"`
	CreateAdded float64 `json:"create_added_p50_ms"`
	// GetRPS is GETs answered per second by Workers concurrent clients.
	GetRPS float64 `json:"get_rps"`
	// Errors counts requests that failed or had an unexpected status.
	Errors int `json:"errors"`
	// GetCPU is the CPU time (user and system, µs) per GET of each agent,
	// of the reverse proxies ("haproxy", "go proxy", "go server proxy",
	// "go raw proxy") and of the benchmark
	// process ("bench": the clients and the relays) while GetRPS was
	// measured (json-server's not counted).
	GetCPU map[string]float64 `json:"get_cpu_us,omitempty"`
}

// ForwardingRun is every path measured at one emulated round-trip time.
type ForwardingRun struct {
	RTT   float64       `json:"rtt_ms"`
	Paths []PathFigures `json:"paths"`
	// Emulation is what the emulated WAN itself costs: a small message
	// and its echo through the same relays, by a plain TCP client (RTT
	// included). The remote agent's added latency is judged against it.
	Emulation Latency `json:"emulation"`
	// Clients is GET req/s through the remote agent (and directly) with
	// more concurrent clients.
	Clients []ClientsRPS `json:"clients,omitempty"`
}

// ClientsRPS is GET req/s with a number of concurrent clients.
type ClientsRPS struct {
	Clients int     `json:"clients"`
	Remote  float64 `json:"remote_rps"`
	Direct  float64 `json:"direct_rps"`
}

// Target is one of the targets and what the run measured for it.
type Target struct {
	Name     string  `json:"name"`
	Measured float64 `json:"measured"`
	Limit    float64 `json:"limit"`
	// Above: the measure must be at least Limit (throughput), else at
	// most (latency).
	Above bool   `json:"above,omitempty"`
	Unit  string `json:"unit"`
	Met   bool   `json:"met"`
}

func newTarget2(name string, measured, limit float64, above bool, unit string) Target {
	met := measured <= limit
	if above {
		met = measured >= limit && measured > 0
	}
	return Target{Name: name, Measured: round3(measured), Limit: round3(limit), Above: above, Unit: unit, Met: met}
}

// Path returns the named path's figures, or nil.
func (r *ForwardingRun) Path(name string) *PathFigures {
	for i := range r.Paths {
		if r.Paths[i].Path == name {
			return &r.Paths[i]
		}
	}
	return nil
}

// ForwardingResult is the forwarding overhead scenario: the same
// json-server reached directly, through a plain reverse proxy, through its
// site's agent and through another site's agent, in the same run.
type ForwardingResult struct {
	// Mode is "cluster" (agent processes started on this machine behind
	// the emulated WAN) or "agents" (a running deployment given with
	// --agents: only the agent paths are measured).
	Mode  string `json:"mode"`
	Sites int    `json:"sites"`
	// AppSite is the site whose application every path reaches; Remote
	// the site whose agent the remote path enters through.
	AppSite string `json:"app_site"`
	Remote  string `json:"remote_site,omitempty"`
	// Proxy names the reverse proxy and its version.
	Proxy string `json:"proxy,omitempty"`
	// Item is the application path read by every GET.
	Item              string          `json:"item"`
	Gets              int             `json:"gets_per_path"`
	Creates           int             `json:"creates_per_path"`
	Workers           int             `json:"throughput_workers"`
	ThroughputSeconds float64         `json:"throughput_seconds"`
	Runs              []ForwardingRun `json:"runs"`
	// LocalAdded and ProxyAdded are the GET p50 latency the local agent
	// and the reverse proxy add to the direct call at 0 ms RTT; Ratio is
	// LocalAdded / ProxyAdded (0 when the proxy added nothing
	// measurable), held to RatioTarget.
	LocalAdded float64 `json:"local_added_ms"`
	ProxyAdded float64 `json:"proxy_added_ms"`
	// GoProxyAdded is what a bare Go reverse proxy (httputil, a process
	// of its own) adds in the same run: the floor of net/http; GoRawAdded
	// what Go adds without net/http's server (ServeGoProxy's raw proxy).
	// GoServerAdded is net/http's server with the agent's way of reaching
	// the application (ServeGoProxy's "server" mode).
	GoProxyAdded  float64 `json:"go_proxy_added_ms,omitempty"`
	GoServerAdded float64 `json:"go_server_proxy_added_ms,omitempty"`
	GoRawAdded    float64 `json:"go_raw_proxy_added_ms,omitempty"`
	Ratio         float64 `json:"local_to_proxy_ratio"`
	RatioTarget   float64 `json:"local_to_proxy_ratio_target"`
	Met           bool    `json:"target_met"`
	Note          string  `json:"note,omitempty"`
	// Targets are every target of the run, met or missed.
	Targets []Target `json:"targets,omitempty"`
	// ReplicatedCreates is creates/s on 2 sites (scope {items: A & B})
	// by CreateClients concurrent clients through A's agent, in front of
	// a Go application that answers at once (tinyApp), at 0 ms RTT;
	// each create is durable on both sites before it is answered.
	ReplicatedCreates float64 `json:"replicated_creates_per_s,omitempty"`
	// Bodies is one GET and one PUT of BodyMiB through each path at 0 ms
	// (the Go application's /blob); RSSBefore and RSSAfter are each
	// agent's peak resident set (MiB) before and after them.
	BodyMiB int           `json:"body_mib,omitempty"`
	Bodies  []BodyFigures `json:"bodies,omitempty"`
	// LinkMBps is what the emulated WAN alone carries one way at 0 ms:
	// BodyMiB from a plain TCP server on the application's site to a
	// client on the other, through the same relays (the remote agent's
	// bodies cross it, the direct path does not).
	LinkMBps float64 `json:"emulated_link_mib_per_s,omitempty"`
	// P2PMBps is what a libp2p connection alone carries one way over the
	// same relays at 0 ms: two hosts built as the agents build theirs
	// (TLS 1.3, yamux), BodyMiB on one stream. A body crossing the
	// remote agent's hop is encrypted and multiplexed so, in both agents.
	P2PMBps float64 `json:"libp2p_link_mib_per_s,omitempty"`
	// LinkCPU and P2PCPU are the CPU time (user and system, µs) per MiB
	// of those two measures: the benchmark process's, where both ends
	// and the relays run.
	LinkCPU float64 `json:"emulated_link_cpu_us_per_mib,omitempty"`
	P2PCPU  float64 `json:"libp2p_link_cpu_us_per_mib,omitempty"`
	// BodyCPU is the CPU time (user and system, µs) per MiB moved of
	// each agent and of the benchmark process ("bench": the client, the
	// application and the relays), by path and method ("remote agent
	// GET").
	BodyCPU       map[string]map[string]float64 `json:"body_cpu_us_per_mib,omitempty"`
	RSSBefore     map[string]float64            `json:"agent_peak_rss_mib_before,omitempty"`
	RSSAfter      map[string]float64            `json:"agent_peak_rss_mib_after,omitempty"`
	CreateClients int                           `json:"create_clients,omitempty"`
	CreateErrors  int                           `json:"create_errors,omitempty"`
	// CreateCPU is the CPU time (user and system, µs) per replicated
	// create of each agent and of the benchmark process ("bench": the
	// clients and both applications) while the creates ran. When the
	// creates keep every core busy, the cores' µs per second over their
	// sum is the rate: where the creates' time goes.
	CreateCPU map[string]float64 `json:"create_cpu_us,omitempty"`
	// Rounds are GET req/s with Workers clients directly and through the
	// remote agent at 0 ms RTT, alternated round by round (phase rps),
	// with the CPU per GET of every process, the applications' included.
	Rounds []RPSRound `json:"rps_rounds,omitempty"`
}

// RPSRound is one round of the rps phase: Workers clients for
// ThroughputSeconds on each path, one path after the other.
type RPSRound struct {
	Path   string             `json:"path"`
	GetRPS float64            `json:"get_rps"`
	GetCPU map[string]float64 `json:"get_cpu_us"`
}

// Missed lists the targets the run missed (cheops bench --strict).
func (r *ForwardingResult) Missed() []string {
	var out []string
	for _, t := range r.Targets {
		if !t.Met {
			out = append(out, fmt.Sprintf("%s: %.3f %s (limit %.3f)", t.Name, t.Measured, t.Unit, t.Limit))
		}
	}
	return out
}

// forwardingProfile sizes a run.
type forwardingProfile struct {
	gets, creates       int // per path, at 0 ms RTT
	rttGets, rttCreates int // per path, at each other RTT
	rtts                []time.Duration
	throughput          time.Duration // per path
	workers             int
	// clients are the numbers of concurrent clients whose GET req/s
	// through the remote agent is measured at the last RTT.
	clients []int
	// createClients create on 2 sites at once (0: not measured).
	createClients int
	// bodyMiB is the size of the large GET and PUT (0: not measured).
	bodyMiB int
}

var (
	forwardingQuick = forwardingProfile{gets: 600, creates: 100, rttGets: 150, rttCreates: 40,
		rtts: []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond}, throughput: 3 * time.Second, workers: 4,
		clients: []int{4, 16, 64}, createClients: 32, bodyMiB: 100}
	forwardingFull = forwardingProfile{gets: 5000, creates: 1000, rttGets: 1000, rttCreates: 200,
		rtts: []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond}, throughput: 15 * time.Second, workers: 4,
		clients: []int{4, 16, 64}, createClients: 32, bodyMiB: 100}
)

// Names of the paths.
const (
	pathDirect = "direct"
	pathProxy  = "haproxy"
	pathLocal  = "local agent"
	pathRemote = "remote agent"
	// pathChain is two HAProxy in a row, one per site, through the
	// emulated WAN (client → HAProxy on the remote site → relay →
	// HAProxy on the application's → application): what any path through
	// two proxies costs on the machine, beside the remote agent's.
	pathChain = "haproxy chain"
	// pathGoProxy is a bare net/http/httputil.ReverseProxy in a process
	// of its own (ServeGoProxy): the floor of a Go proxy on the machine,
	// beside HAProxy's and the local agent's.
	pathGoProxy = "go proxy"
	// pathGoRaw is Go without net/http's server and Transport: one
	// goroutine per connection reading and writing HTTP/1.1 with the
	// standard library's parsers (ServeGoProxy's raw proxy).
	pathGoRaw = "go raw proxy"
	// pathGoServer is net/http's server with the backend connections of
	// its own that the agent keeps too (ServeGoProxy's "server" mode).
	pathGoServer = "go server proxy"
)

// RunForwarding measures the forwarding overhead: GET of one item and
// POST of a new one on one json-server, directly, through HAProxy, through
// the local agent and through a remote agent (one WAN hop, at 0 ms and at
// the profile's other RTTs). With env.Agents it measures a running
// deployment instead: through the first agent (local) and the second
// (remote), no direct or proxy path.
func RunForwarding(ctx context.Context, env Env) (*ForwardingResult, error) {
	p := forwardingQuick
	if env.Full {
		p = forwardingFull
	}
	return runForwarding(ctx, env, p)
}

// fwTarget is one way to reach the application.
type fwTarget struct {
	name   string
	base   string // URL the application's paths are appended to
	scope  string // X-Cheops-Scope, empty for none
	client *http.Client
}

func newTarget(name, base, scope string) *fwTarget {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	return &fwTarget{name: name, base: base, scope: scope, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// do sends one request and reads the whole answer; an unexpected status is
// an error.
func (t *fwTarget) do(ctx context.Context, method, path string, body []byte, want int) (http.Header, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.base+path, rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.scope != "" {
		req.Header.Set("X-Cheops-Scope", t.scope)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != want {
		return nil, nil, fmt.Errorf("%s %s via %s: %s: %s", method, path, t.name, resp.Status, tail(string(b), 300))
	}
	return resp.Header, b, nil
}

func (t *fwTarget) close() { t.client.CloseIdleConnections() }

func runForwarding(ctx context.Context, env Env, p forwardingProfile) (*ForwardingResult, error) {
	log := env.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(env.Agents) > 0 {
		return forwardAgents(ctx, env, p, log)
	}
	n := env.Sites
	if n == 0 {
		n = 2
	}
	if n < 2 {
		return nil, fmt.Errorf("bench: forwarding needs at least 2 sites, got %d", n)
	}
	haproxy, err := ensureCommand(ctx, log, "haproxy", "haproxy")
	if err != nil {
		return nil, err
	}
	log.Info("forwarding: starting sites", "sites", n)
	names := citySites(n)
	siteArgs := map[string][]string{}
	var tinies []*tinyApp
	for i, name := range names[:2] {
		tiny, err := startTinyApp(wan.SiteAddr(i))
		if err != nil {
			return nil, err
		}
		defer tiny.close()
		tinies = append(tinies, tiny)
		siteArgs[name] = []string{"--service", "items=" + tiny.URL}
	}
	agentArgs := strings.Fields(os.Getenv(AgentArgsEnv))
	if p.bodyMiB > 0 {
		// Bodies up to twice the large ones: a buffered path is let
		// through, and shows in the agents' memory.
		agentArgs = append(agentArgs, "--max-body", strconv.Itoa(2*p.bodyMiB<<20))
	}
	bin := env.Binary
	if b := os.Getenv(AgentBinaryEnv); b != "" {
		bin = b // another build's agents, measured by this one's driver (A/B)
	}
	c, err := StartCluster(ctx, ClusterOptions{Binary: bin, Sites: names, Dir: filepath.Join(env.Dir, "forwarding"), SiteArgs: siteArgs,
		AgentArgs: agentArgs, Log: log})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	app, remote := c.Sites[0], c.Sites[1]
	// The item every GET reads, written straight into the application.
	direct := newTarget(pathDirect, app.App, "")
	defer direct.close()
	if _, _, err := direct.do(ctx, http.MethodPost, "/posts", []byte(`{"id": 1, "title": "read me", "body": "the item every path reads"}`), http.StatusCreated); err != nil {
		return nil, err
	}
	proxyAddr, version, proxyPid, stop, err := startHAProxy(ctx, haproxy, filepath.Join(env.Dir, "forwarding", "haproxy"), app.ip, hostPortOf(app.App), haproxyExtra{})
	if err != nil {
		return nil, err
	}
	// The proxies' CPU per GET is read beside the agents'.
	proxyPids := map[string]int{pathProxy: proxyPid}
	defer stop()
	phases, err := forwardingPhases()
	if err != nil {
		return nil, err
	}
	appScope := "{posts: " + app.Name + "}"
	proxy := newTarget(pathProxy, "http://"+proxyAddr, "")
	local := newTarget(pathLocal, app.API+"/svc/posts", appScope)
	far := newTarget(pathRemote, remote.API+"/svc/posts", appScope)
	targets := []*fwTarget{direct, proxy, local, far}
	if phases["latency"] {
		// The second HAProxy, on the remote site, reaches the first
		// through the relay, from the remote site's address.
		relay, err := c.Net.Expose(app.Name, hostOf(app.relay), proxyAddr)
		if err != nil {
			return nil, err
		}
		chainAddr, _, _, stopChain, err := startHAProxy(ctx, haproxy, filepath.Join(env.Dir, "forwarding", "haproxy-chain"), remote.ip, relay, haproxyExtra{source: remote.ip})
		if err != nil {
			return nil, err
		}
		defer stopChain()
		targets = append(targets, newTarget(pathChain, "http://"+chainAddr, ""))
		goBin := env.Binary
		if b := os.Getenv(GoProxyBinaryEnv); b != "" {
			goBin = b // e.g. a wrapper that sets the Go runtime's environment
		}
		for _, name := range []string{pathGoProxy, pathGoServer, pathGoRaw} {
			goAddr, goPid, stopGo, err := startGoProxy(ctx, goBin, app.ip, hostPortOf(app.App), name)
			if err != nil {
				return nil, err
			}
			defer stopGo()
			proxyPids[name] = goPid
			targets = append(targets, newTarget(name, "http://"+goAddr, ""))
		}
	}
	for _, t := range targets[1:] {
		defer t.close()
	}
	res := &ForwardingResult{Mode: "cluster", Sites: n, AppSite: app.Name, Remote: remote.Name, Proxy: version, Item: "/posts/1",
		Gets: p.gets, Creates: p.creates, Workers: p.workers, ThroughputSeconds: p.throughput.Seconds(), RatioTarget: 1.2}
	rtts, err := forwardingRTTs(p.rtts)
	if err != nil {
		return nil, err
	}
	if phases["rps"] {
		c.Net.SetRTT(0)
		if err := res.rpsRounds(ctx, c, p, direct, far, log); err != nil {
			return nil, err
		}
	}
	for _, rtt := range rtts {
		if !phases["latency"] && rtt > 0 {
			continue
		}
		c.Net.SetRTT(rtt)
		if err := res.measureLatency(ctx, c, p, phases, rtt, targets, proxyPids, log); err != nil {
			return nil, err
		}
		if rtt == 0 && p.createClients > 0 && phases["creates"] {
			log.Info("forwarding: replicated creates", "sites", 2, "clients", p.createClients)
			both := newTarget("replicated creates", app.API+"/svc/items", "{items: "+app.Name+" & "+remote.Name+"}")
			res.CreateClients = p.createClients
			cpu0 := cpuTimes(c)
			res.ReplicatedCreates, res.CreateErrors, err = createRate(ctx, both, p.createClients, p.throughput)
			cpu1 := cpuTimes(c)
			both.close()
			if err != nil {
				return nil, err
			}
			res.CreateCPU = cpuPer(cpu0, cpu1, res.ReplicatedCreates*p.throughput.Seconds())
			res.ReplicatedCreates = math.Round(res.ReplicatedCreates)
		}
		if rtt == 0 && p.bodyMiB > 0 && phases["bodies"] {
			// A good proxy's figure beside the agents': HAProxy in front
			// of the same application, splicing as it judges best.
			bodyProxy, _, bodyProxyPid, stopBodyProxy, err := startHAProxy(ctx, haproxy, filepath.Join(env.Dir, "forwarding", "haproxy-bodies"),
				app.ip, hostPortOf(tinies[0].URL), haproxyExtra{option: "option splice-auto", probe: "/blob?size=1"})
			if err != nil {
				return nil, err
			}
			err = res.largeBodies(ctx, c, tinies[0].URL, "http://"+bodyProxy, bodyProxyPid, p.bodyMiB, log)
			stopBodyProxy()
			if err != nil {
				return nil, err
			}
			cpu0 := SelfCPU()
			mbps, err := streamThrough(ctx, c.Net, app, remote, int64(p.bodyMiB)<<20)
			if err != nil {
				return nil, err
			}
			cpu1 := SelfCPU()
			res.LinkMBps, res.LinkCPU = math.Round(mbps), math.Round(float64((cpu1-cpu0).Microseconds())/float64(p.bodyMiB))
			if mbps, err = libp2pThrough(ctx, c.Net, app, remote, int64(p.bodyMiB)<<20); err != nil {
				return nil, err
			}
			res.P2PMBps, res.P2PCPU = math.Round(mbps), math.Round(float64((SelfCPU()-cpu1).Microseconds())/float64(p.bodyMiB))
		}
	}
	res.judge()
	return res, nil
}

// PhasesEnv names the environment variable that, set to a list of
// phases among latency, creates, bodies and rps ("bodies" or
// "latency,bodies"), has the forwarding scenario measure only those:
// the latencies and req/s at every RTT, the replicated creates, the
// large bodies, GET req/s directly and through the remote agent in
// alternate rounds (rpsRounds). Unset, it measures all but rps.
const PhasesEnv = "CHEOPS_BENCH_PHASES"

// AgentBinaryEnv names the environment variable that, set to the path
// of a cheops binary, has the forwarding scenario start its agents from
// that binary rather than from the one running the benchmark: two
// builds compared by the same driver.
const AgentBinaryEnv = "CHEOPS_BENCH_AGENT_BINARY"

// GoProxyBinaryEnv names the environment variable that, set to the path
// of a cheops binary (or a script that runs one), has the latency phase
// start its bare Go proxies (`cheops bench-goproxy`) from it rather than
// from the driver's binary: e.g. a wrapper that sets GOMAXPROCS for the
// proxies alone, beside the same one given as AgentBinaryEnv.
const GoProxyBinaryEnv = "CHEOPS_BENCH_GOPROXY_BINARY"

// RTTsEnv names the environment variable that, set to a list of round
// trip times in ms ("0" or "0,80"), has the forwarding scenario measure
// its latencies at those only. Unset, at the profile's (0, 20, 80 ms).
const RTTsEnv = "CHEOPS_BENCH_RTTS"

func forwardingRTTs(def []time.Duration) ([]time.Duration, error) {
	v := strings.TrimSpace(os.Getenv(RTTsEnv))
	if v == "" {
		return def, nil
	}
	var out []time.Duration
	for _, w := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
		ms, err := strconv.Atoi(w)
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("bench: %s: %q is not a round trip in ms", RTTsEnv, w)
		}
		out = append(out, time.Duration(ms)*time.Millisecond)
	}
	return out, nil
}

func forwardingPhases() (map[string]bool, error) {
	all := map[string]bool{"latency": true, "creates": true, "bodies": true}
	// rps is only run when asked for.
	known := map[string]bool{"latency": true, "creates": true, "bodies": true, "rps": true}
	v := strings.TrimSpace(os.Getenv(PhasesEnv))
	if v == "" {
		return all, nil
	}
	out := map[string]bool{}
	for _, w := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
		if !known[w] {
			return nil, fmt.Errorf("bench: %s: unknown phase %q (want latency, creates, bodies or rps)", PhasesEnv, w)
		}
		out[w] = true
	}
	return out, nil
}

// rpsRounds measures GET req/s with p.workers clients, directly and
// through the remote agent at 0 ms RTT, alternately for rpsRoundCount
// rounds, with every process's CPU per GET (the applications' as "app
// SITE"); with ProfileEnv and LogsEnv set, the agents are then profiled
// during the remote path ("rps-remote-agent-SITE.pprof"), and traced
// while one client reads through it ("rps-remote-agent-SITE.trace").
func (res *ForwardingResult) rpsRounds(ctx context.Context, c *Cluster, p forwardingProfile, direct, far *fwTarget, log *slog.Logger) error {
	for _, t := range []*fwTarget{direct, far} {
		for range 20 {
			if _, _, err := t.do(ctx, http.MethodGet, res.Item, nil, http.StatusOK); err != nil {
				return fmt.Errorf("bench: warm-up: %w", err)
			}
		}
		// json-server takes 1.4–1.6 ms of CPU per GET in its first
		// seconds against ~0.6 after (its JIT): both paths warm first.
		_, _ = throughput(ctx, t, res.Item, p.workers, 2*time.Second)
	}
	cpu := func() map[string]time.Duration {
		out := cpuTimes(c)
		for _, s := range c.Sites {
			if s.app != nil && s.app.Process != nil {
				if d, ok := ProcessCPU(s.app.Process.Pid); ok {
					out["app "+s.Name] = d
				}
			}
		}
		return out
	}
	for round := range rpsRoundCount {
		for _, t := range []*fwTarget{direct, far} {
			log.Info("forwarding: GET req/s", "round", round+1, "path", t.name, "clients", p.workers)
			cpu0 := cpu()
			rps, _ := throughput(ctx, t, res.Item, p.workers, p.throughput)
			res.Rounds = append(res.Rounds, RPSRound{Path: t.name, GetRPS: math.Round(rps), GetCPU: cpuPer(cpu0, cpu(), rps*p.throughput.Seconds())})
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := profileWhile(ctx, c, "rps-remote-agent", log, func() error {
		_, _ = throughput(ctx, far, res.Item, p.workers, 500*time.Millisecond)
		return ctx.Err()
	}); err != nil {
		return err
	}
	// An execution trace of both agents while one client reads through
	// the remote agent, one GET after another: one GET's stages.
	return pprofWhile(ctx, c, "trace", "rps-remote-agent-%s.trace", log, func() error {
		_, _ = throughput(ctx, far, res.Item, 1, 200*time.Millisecond)
		return ctx.Err()
	})
}

// rpsRoundCount is the rounds of the rps phase.
const rpsRoundCount = 3

// measureLatency measures, when phases has latency, the GET and create
// latencies and GET req/s of the paths at rtt (only direct and the
// remote agent's at an RTT above 0), the emulation's own round trip and,
// at the last RTT, GET req/s by number of clients.
//
// proxies are the process ids of the reverse proxies by path, whose CPU
// per GET is read beside the agents'.
func (res *ForwardingResult) measureLatency(ctx context.Context, c *Cluster, p forwardingProfile, phases map[string]bool, rtt time.Duration, targets []*fwTarget, proxies map[string]int, log *slog.Logger) error {
	if !phases["latency"] {
		return nil
	}
	app, remote := c.Sites[0], c.Sites[1]
	direct, far := targets[0], targets[3]
	gets, creates := p.gets, p.creates
	if rtt > 0 {
		// Only the remote path crosses the WAN; direct stays as the
		// reference of the same moment.
		targets = []*fwTarget{direct, far}
		gets, creates = p.rttGets, p.rttCreates
	}
	log.Info("forwarding: measuring", "rtt", rtt, "paths", len(targets), "gets", gets, "creates", creates)
	run, err := measureRun(ctx, targets, res.Item, gets, creates, p, func() map[string]time.Duration {
		out := cpuTimes(c)
		for path, pid := range proxies {
			if d, ok := ProcessCPU(pid); ok {
				out[path] = d
			}
		}
		return out
	})
	if err != nil {
		return err
	}
	run.RTT = float64(rtt) / float64(time.Millisecond)
	if run.Emulation, err = echoThrough(ctx, c.Net, app, remote, gets); err != nil {
		return err
	}
	if rtt == p.rtts[len(p.rtts)-1] {
		for _, n := range p.clients {
			log.Info("forwarding: GET req/s", "rtt", rtt, "clients", n)
			rf, _ := throughput(ctx, far, res.Item, n, p.throughput)
			rd, _ := throughput(ctx, direct, res.Item, n, p.throughput)
			run.Clients = append(run.Clients, ClientsRPS{Clients: n, Remote: math.Round(rf), Direct: math.Round(rd)})
		}
		if err := ctx.Err(); err != nil {
			return err // stopped: no figures for a cut run
		}
	}
	res.Runs = append(res.Runs, run)
	if rtt == 0 {
		// Profiles last: GETs through the local agent, then the remote
		// one, 4 clients.
		if err := profileWhile(ctx, c, "gets-local-agent", log, func() error {
			_, _ = throughput(ctx, targets[2], res.Item, p.workers, 500*time.Millisecond)
			return ctx.Err()
		}); err != nil {
			return err
		}
		return profileWhile(ctx, c, "gets-remote-agent", log, func() error {
			_, _ = throughput(ctx, far, res.Item, p.workers, 500*time.Millisecond)
			return ctx.Err()
		})
	}
	return nil
}

// largeBodies measures a GET and a PUT of mib MiB directly (the Go
// application at appURL), through HAProxy in front of it (proxyURL, its
// process proxyPid), through the app site's agent and through the
// other's — the median of bodyMoves of each, the paths taken in turn
// move after move so that the machine's changes of speed fall on all of
// them alike — with the CPU time each process spent per MiB moved, and
// each agent's peak memory before and after. With ProfileEnv and
// LogsEnv set (and the agents started with --pprof, AgentArgsEnv), each
// agent path's GET and PUT are then repeated while both agents are
// profiled, after the figures.
func (r *ForwardingResult) largeBodies(ctx context.Context, c *Cluster, appURL, proxyURL string, proxyPid, mib int, log *slog.Logger) error {
	app, remote := c.Sites[0], c.Sites[1]
	scope := "{items: " + app.Name + "}"
	targets := []*fwTarget{newTarget(pathDirect, appURL, ""), newTarget(pathProxy, proxyURL, ""),
		newTarget(pathLocal, app.API+"/svc/items", scope), newTarget(pathRemote, remote.API+"/svc/items", scope)}
	for _, t := range targets {
		defer t.close()
	}
	r.BodyMiB, r.RSSBefore, r.RSSAfter = mib, map[string]float64{}, map[string]float64{}
	r.BodyCPU = map[string]map[string]float64{}
	for _, s := range []*Site{app, remote} {
		r.RSSBefore[s.Name] = peakRSS(s.agent.Process.Pid)
	}
	times := func() map[string]time.Duration {
		m := cpuTimes(c)
		if d, ok := ProcessCPU(proxyPid); ok {
			m[pathProxy] = d
		}
		return m
	}
	size := int64(mib) << 20
	methods := []string{http.MethodGet, http.MethodPut}
	rates := map[string][]float64{}
	spent := map[string]map[string]time.Duration{}
	for move := range bodyMoves {
		for _, t := range targets {
			for _, method := range methods {
				if move == 0 {
					log.Info("forwarding: large bodies", "path", t.name, "method", method, "MiB", mib)
				}
				key := t.name + " " + method
				cpu0 := times()
				mbps, err := moveBody(ctx, t, method, size)
				if err != nil {
					return err
				}
				rates[key] = append(rates[key], mbps)
				if spent[key] == nil {
					spent[key] = map[string]time.Duration{}
				}
				for k, d := range cpuSpent(cpu0, times()) {
					spent[key][k] += d
				}
			}
		}
	}
	median := func(key string) float64 {
		rs := slices.Sorted(slices.Values(rates[key]))
		return math.Round(rs[len(rs)/2])
	}
	for _, t := range targets {
		for _, method := range methods {
			key := t.name + " " + method
			if t.name != pathProxy {
				delete(spent[key], pathProxy) // idle then: noise
			}
			r.BodyCPU[key] = cpuPerOp(spent[key], float64(bodyMoves*mib))
		}
		r.Bodies = append(r.Bodies, BodyFigures{Path: t.name, GetMBps: median(t.name + " " + http.MethodGet), PutMBps: median(t.name + " " + http.MethodPut)})
	}
	for _, s := range []*Site{app, remote} {
		r.RSSAfter[s.Name] = peakRSS(s.agent.Process.Pid)
	}
	// Profiles last: taking one raises an agent's memory.
	for _, t := range targets[2:] {
		for _, method := range methods {
			if err := profileBodies(ctx, c, t, method, size, log); err != nil {
				return err
			}
		}
	}
	return nil
}

// remoteBound estimates the most the remote path can move on this
// machine were its cores busy with it alone and at every moment: its
// body costs at least what the direct path's does (the application
// writing it, the client reading it) and what the libp2p link alone
// costs (P2PCPU: both ends' TLS and yamux, a writer and a reader, the
// relays) — the agents' own work then adds nothing. It returns MiB/s
// for GET and PUT.
func (r *ForwardingResult) remoteBound() ([2]float64, bool) {
	get, put := r.BodyCPU[pathDirect+" GET"], r.BodyCPU[pathDirect+" PUT"]
	if r.P2PCPU <= 0 || get == nil || put == nil {
		return [2]float64{}, false
	}
	sum := func(m map[string]float64) float64 {
		t := 0.0
		for _, v := range m {
			t += v
		}
		return t
	}
	cores := float64(runtime.NumCPU()) * 1e6
	return [2]float64{math.Round(cores / (r.P2PCPU + sum(get))), math.Round(cores / (r.P2PCPU + sum(put)))}, true
}

// bodyMoves is how many times each large body is moved on each path.
const bodyMoves = 3

// profileBodies, when ProfileEnv and LogsEnv ask for it, profiles every
// agent while method moves bodies of size through t one after the
// other (bodies-<path>-<method>-<site>.pprof).
func profileBodies(ctx context.Context, c *Cluster, t *fwTarget, method string, size int64, log *slog.Logger) error {
	return profileWhile(ctx, c, fmt.Sprintf("bodies-%s-%s", strings.ReplaceAll(t.name, " ", "-"), method), log, func() error {
		_, err := moveBody(ctx, t, method, size)
		return err
	})
}

// profileWhile, when ProfileEnv and LogsEnv ask for it, profiles every
// agent for ProfileEnv's duration while it runs work again and again,
// and writes the profiles where LogsEnv says (<prefix>-<site>.pprof).
func profileWhile(ctx context.Context, c *Cluster, prefix string, log *slog.Logger, work func() error) error {
	return pprofWhile(ctx, c, "profile", prefix+"-%s.pprof", log, work)
}

// pprofWhile is profileWhile for one of the agents' pprof endpoints
// that take seconds (profile, trace); name is the file's, with %s for
// the site.
func pprofWhile(ctx context.Context, c *Cluster, kind, name string, log *slog.Logger, work func() error) error {
	d, err := time.ParseDuration(os.Getenv(ProfileEnv))
	dir := os.Getenv(LogsEnv)
	if err != nil || d <= 0 || dir == "" {
		return nil
	}
	var wg sync.WaitGroup
	var busy atomic.Bool
	busy.Store(true)
	for _, s := range c.Sites {
		path := filepath.Join(dir, fmt.Sprintf(name, s.Name))
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, err := c.get(ctx, fmt.Sprintf("%s/debug/pprof/%s?seconds=%d", s.API, kind, int(max(1, d.Seconds()))))
			if err == nil {
				err = os.WriteFile(path, body, 0o644)
			}
			if err != nil {
				log.Warn("profile an agent", "site", s.Name, "err", err)
			}
		}()
	}
	go func() { wg.Wait(); busy.Store(false) }()
	for busy.Load() {
		if err := work(); err != nil {
			return err
		}
	}
	return nil
}

// streamThrough measures what the emulated WAN alone carries: a TCP
// server on app's address behind a relay of the same network writes
// size bytes to a client on remote's address; it returns MiB/s.
func streamThrough(ctx context.Context, nw *wan.Network, app, remote *Site, size int64) (float64, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(app.ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("bench: stream server: %w", err)
	}
	done := make(chan struct{})
	defer func() { <-done }()
	defer ln.Close()
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = writeBytes(c, size)
	}()
	relay, err := nw.Expose(app.Name, hostOf(app.relay), ln.Addr().String())
	if err != nil {
		return 0, err
	}
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(remote.ip)}}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", relay)
	if err != nil {
		return 0, fmt.Errorf("bench: dial the relay: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	return readRate(conn, size, start, "stream through the relay")
}

// writeBytes writes size zero bytes to w in 64 KiB writes.
func writeBytes(w io.Writer, size int64) error {
	buf := make([]byte, 64<<10)
	for left := size; left > 0; {
		n, err := w.Write(buf[:min(int64(len(buf)), left)])
		if err != nil {
			return err
		}
		left -= int64(n)
	}
	return nil
}

// readRate reads r to its end, checks it carried size bytes, and returns
// MiB/s since start.
func readRate(r io.Reader, size int64, start time.Time, what string) (float64, error) {
	n, err := io.Copy(io.Discard, r)
	if err != nil || n != size {
		return 0, fmt.Errorf("bench: %s: %d of %d bytes: %v", what, n, size, err)
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}

// echoThrough measures the emulated WAN alone: a TCP echo server on
// app's address behind a relay of the same network, and a client on
// remote's address sending it n small messages one after the other.
func echoThrough(ctx context.Context, nw *wan.Network, app, remote *Site, n int) (Latency, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(app.ip, "0"))
	if err != nil {
		return Latency{}, fmt.Errorf("bench: echo server: %w", err)
	}
	done := make(chan struct{})
	defer func() { <-done }()
	defer ln.Close()
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	relay, err := nw.Expose(app.Name, hostOf(app.relay), ln.Addr().String())
	if err != nil {
		return Latency{}, err
	}
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(remote.ip)}}
	conn, err := d.DialContext(ctx, "tcp", relay)
	if err != nil {
		return Latency{}, fmt.Errorf("bench: dial the relay: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	msg := bytes.Repeat([]byte("x"), 300) // about a small request's size
	buf := make([]byte, len(msg))
	var ms []float64
	for i := range n + 5 {
		start := time.Now()
		if _, err := conn.Write(msg); err != nil {
			return Latency{}, fmt.Errorf("bench: echo: %w", err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			return Latency{}, fmt.Errorf("bench: echo: %w", err)
		}
		if i >= 5 {
			ms = append(ms, float64(time.Since(start))/float64(time.Millisecond))
		}
	}
	return summarise(ms), nil
}

// forwardAgents measures a running deployment through its agents.
func forwardAgents(ctx context.Context, env Env, p forwardingProfile, log *slog.Logger) (*ForwardingResult, error) {
	var site0 string
	var health struct {
		Site string `json:"site"`
	}
	probe := newTarget("agent", env.Agents[0], "")
	defer probe.close()
	_, b, err := probe.do(ctx, http.MethodGet, "/v1/health", nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &health); err != nil || health.Site == "" {
		return nil, fmt.Errorf("bench: %s/v1/health: no site in %q", env.Agents[0], tail(string(b), 200))
	}
	site0 = health.Site
	appScope := "{posts: " + site0 + "}"
	local := newTarget(pathLocal, env.Agents[0]+"/svc/posts", appScope)
	defer local.close()
	hdr, _, err := local.do(ctx, http.MethodPost, "/posts", []byte(`{"title": "read me", "body": "the item every path reads"}`), http.StatusCreated)
	if err != nil {
		return nil, fmt.Errorf("bench: the agents must serve a json-server-like service named posts: %w", err)
	}
	gid := hdr.Get("X-Cheops-Resource")
	if gid == "" {
		return nil, errors.New("bench: the create answered no X-Cheops-Resource")
	}
	res := &ForwardingResult{Mode: "agents", Sites: len(env.Agents), AppSite: site0, Item: "/posts/" + gid,
		Gets: p.gets, Creates: p.creates, Workers: p.workers, ThroughputSeconds: p.throughput.Seconds(), RatioTarget: 1.2}
	targets := []*fwTarget{local}
	rtt := 0.0
	if len(env.Agents) > 1 {
		far := newTarget(pathRemote, env.Agents[1]+"/svc/posts", appScope)
		defer far.close()
		targets = append(targets, far)
		var sites []struct {
			Site string  `json:"site"`
			RTT  float64 `json:"rtt_ms"`
			Self bool    `json:"self"`
		}
		probe1 := newTarget("agent", env.Agents[1], "")
		defer probe1.close()
		if _, b, err := probe1.do(ctx, http.MethodGet, "/v1/sites", nil, http.StatusOK); err == nil && json.Unmarshal(b, &sites) == nil {
			for _, s := range sites {
				if s.Site == site0 {
					rtt = s.RTT
				}
				if s.Self {
					res.Remote = s.Site
				}
			}
		}
	}
	log.Info("forwarding: measuring a running deployment", "agents", len(env.Agents), "app site", site0)
	run, err := measureRun(ctx, targets, res.Item, p.gets, p.creates, p, nil)
	if err != nil {
		return nil, err
	}
	run.RTT = rtt
	res.Runs = append(res.Runs, run)
	res.judge()
	res.Note = "a running deployment: no direct or reverse-proxy path to compare with; the RTT is the agents' own measurement"
	return res, nil
}

// measureRun measures every target: GET and create latencies with the
// targets interleaved request by request (so that any drift of the
// application weighs on all alike), then GET throughput one target at a
// time.
//
// cpu, when set, reads the CPU time of the processes to report per GET
// while the throughput is measured.
func measureRun(ctx context.Context, targets []*fwTarget, item string, gets, creates int, p forwardingProfile, cpu func() map[string]time.Duration) (ForwardingRun, error) {
	// Warm up connections and caches.
	for _, t := range targets {
		for range 10 {
			if _, _, err := t.do(ctx, http.MethodGet, item, nil, http.StatusOK); err != nil {
				return ForwardingRun{}, fmt.Errorf("bench: warm-up: %w", err)
			}
		}
	}
	getLat := make([][]float64, len(targets))
	createLat := make([][]float64, len(targets))
	errs := make([]int, len(targets))
	var firstErr error
	interleave := func(rounds int, lat [][]float64, send func(t *fwTarget, i int) error) error {
		for i := range rounds {
			if err := ctx.Err(); err != nil {
				return err
			}
			for k := range targets {
				j := (i + k) % len(targets)
				start := time.Now()
				err := send(targets[j], i)
				if err != nil {
					errs[j]++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat[j] = append(lat[j], float64(time.Since(start))/float64(time.Millisecond))
			}
		}
		return nil
	}
	if err := interleave(gets, getLat, func(t *fwTarget, _ int) error {
		_, _, err := t.do(ctx, http.MethodGet, item, nil, http.StatusOK)
		return err
	}); err != nil {
		return ForwardingRun{}, err
	}
	if err := interleave(creates, createLat, func(t *fwTarget, i int) error {
		body := fmt.Sprintf(`{"title": "bench %d", "via": %q}`, i, t.name)
		_, _, err := t.do(ctx, http.MethodPost, "/posts", []byte(body), http.StatusCreated)
		return err
	}); err != nil {
		return ForwardingRun{}, err
	}
	var run ForwardingRun
	for j, t := range targets {
		var cpu0 map[string]time.Duration
		if cpu != nil {
			cpu0 = cpu()
		}
		// New connections for every path: a connection that carried the
		// creates is one an agent serves with net/http's server for the
		// rest of its life (forward/fastpath.go), where a client's first
		// requests would be reads.
		t.close()
		rps, n := throughput(ctx, t, item, p.workers, p.throughput)
		errs[j] += n
		pf := PathFigures{Path: t.name, Get: summarise(getLat[j]), Create: summarise(createLat[j]), GetRPS: rps, Errors: errs[j]}
		if cpu != nil {
			pf.GetCPU = cpuPer(cpu0, cpu(), rps*p.throughput.Seconds())
		}
		run.Paths = append(run.Paths, pf)
	}
	for i := range run.Paths {
		run.Paths[i].GetAdded = run.Paths[i].Get.P50 - run.Paths[0].Get.P50
		run.Paths[i].CreateAdded = run.Paths[i].Create.P50 - run.Paths[0].Create.P50
	}
	total := 0
	for _, e := range errs {
		total += e
	}
	if total > (gets+creates)*len(targets)/100 {
		return run, fmt.Errorf("bench: %d requests failed, first: %w", total, firstErr)
	}
	return run, ctx.Err()
}

// throughput runs workers clients sending GETs for d and returns the
// answered requests per second and the failures.
func throughput(ctx context.Context, t *fwTarget, item string, workers int, d time.Duration) (float64, int) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, _, err := t.do(ctx, http.MethodGet, item, nil, http.StatusOK); err == nil {
					ok.Add(1)
				} else if ctx.Err() == nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds(), int(failed.Load())
}

// summarise gives the nearest-rank percentiles of samples in ms.
func summarise(ms []float64) Latency {
	if len(ms) == 0 {
		return Latency{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	rank := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Latency{N: len(s), P50: round3(rank(0.50)), P99: round3(rank(0.99)), Mean: round3(sum / float64(len(s)))}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// body is the large bodies' figures of path.
func (r *ForwardingResult) body(path string) (BodyFigures, bool) {
	i := slices.IndexFunc(r.Bodies, func(b BodyFigures) bool { return b.Path == path })
	if i < 0 {
		return BodyFigures{}, false
	}
	return r.Bodies[i], true
}

// judge computes the target figures from the 0 ms run.
func (r *ForwardingResult) judge() {
	r.judgeLocal()
	if d, ok := r.body(pathDirect); ok {
		for _, b := range r.Bodies {
			if b.Path != pathLocal && b.Path != pathRemote {
				continue
			}
			r.Targets = append(r.Targets,
				newTarget2(fmt.Sprintf("%s: %d MiB GET >= 0.8x direct MiB/s (0 ms)", b.Path, r.BodyMiB), b.GetMBps, 0.8*d.GetMBps, true, "MiB/s"),
				newTarget2(fmt.Sprintf("%s: %d MiB PUT >= 0.8x direct MiB/s (0 ms)", b.Path, r.BodyMiB), b.PutMBps, 0.8*d.PutMBps, true, "MiB/s"))
		}
		for _, site := range slices.Sorted(maps.Keys(r.RSSAfter)) {
			// Flat: the large bodies raised no agent's peak by a tenth
			// of their size.
			r.Targets = append(r.Targets, newTarget2(fmt.Sprintf("agent of %s: peak RSS grows by < %d MiB over the large bodies", site, r.BodyMiB/10),
				r.RSSAfter[site]-r.RSSBefore[site], float64(r.BodyMiB/10), false, "MiB"))
		}
	}
	if r.CreateClients > 0 {
		r.Targets = append(r.Targets, newTarget2(fmt.Sprintf("replicated creates on 2 sites with %d clients (0 ms)", r.CreateClients),
			r.ReplicatedCreates, 1000, true, "creates/s"))
	}
	for _, run := range r.Runs {
		if far := run.Path(pathRemote); far != nil && run.Emulation.N > 0 {
			r.Targets = append(r.Targets, newTarget2(fmt.Sprintf("remote agent: added GET p50 <= emulated round trip + 0.5 ms (%.0f ms RTT)", run.RTT),
				far.GetAdded, run.Emulation.P50+0.5, false, "ms"))
		}
		for i := 1; i < len(run.Clients); i++ {
			prev, cur := run.Clients[i-1], run.Clients[i]
			r.Targets = append(r.Targets, newTarget2(fmt.Sprintf("remote agent: GET req/s grows with clients, %d >= 1.5x %d (%.0f ms RTT)", cur.Clients, prev.Clients, run.RTT),
				cur.Remote, 1.5*prev.Remote, true, "req/s"))
		}
	}
}

// judgeLocal judges the 0 ms run's local agent against the reverse
// proxy, and the remote agent's GET req/s against the direct path's.
func (r *ForwardingResult) judgeLocal() {
	if len(r.Runs) == 0 {
		return
	}
	run := &r.Runs[0]
	local, proxy, direct := run.Path(pathLocal), run.Path(pathProxy), run.Path(pathDirect)
	if local == nil || proxy == nil || direct == nil {
		return
	}
	r.LocalAdded, r.ProxyAdded = round3(local.GetAdded), round3(proxy.GetAdded)
	if gp := run.Path(pathGoProxy); gp != nil {
		r.GoProxyAdded = round3(gp.GetAdded)
	}
	if gp := run.Path(pathGoServer); gp != nil {
		r.GoServerAdded = round3(gp.GetAdded)
	}
	if gp := run.Path(pathGoRaw); gp != nil {
		r.GoRawAdded = round3(gp.GetAdded)
	}
	limit := r.RatioTarget * math.Max(r.ProxyAdded, 0)
	r.Met = r.LocalAdded <= limit
	if r.ProxyAdded > 0.001 {
		r.Ratio = math.Round(r.LocalAdded/r.ProxyAdded*100) / 100
	}
	if !r.Met {
		r.Note = fmt.Sprintf("local forward adds %.3f ms at p50 against %.3f ms for %s: %.3f ms over the target of %.1f× the proxy's",
			r.LocalAdded, r.ProxyAdded, r.Proxy, r.LocalAdded-limit, r.RatioTarget)
	}
	r.Targets = append(r.Targets,
		newTarget2("local agent: added GET p50 <= 1.2x HAProxy's (0 ms)", r.LocalAdded, limit, false, "ms"),
		newTarget2("local agent: GET p99 <= HAProxy's (0 ms)", local.Get.P99, proxy.Get.P99, false, "ms"))
	if far := run.Path(pathRemote); far != nil {
		r.Targets = append(r.Targets, newTarget2("remote agent: GET req/s with 4 clients >= 0.9x direct (0 ms)", far.GetRPS, 0.9*direct.GetRPS, true, "req/s"))
	}
}

// haproxyExtra is what startHAProxy may be given beyond the defaults.
type haproxyExtra struct {
	source string // the address its connections to the backend come from
	option string // a line of its defaults section, e.g. "option splice-auto"
	probe  string // the path a GET of which answers 200 once it is up (/posts/1)
}

// startHAProxy runs HAProxy on ip (a free port) in front of backend
// (host:port) with keep-alive on both sides and extra, and returns its
// address, its version and its process id and a function that stops it.
func startHAProxy(ctx context.Context, bin, dir, ip, backend string, extra haproxyExtra) (string, string, int, func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", 0, nil, fmt.Errorf("bench: %w", err)
	}
	ports, err := freePorts(ip, 1)
	if err != nil {
		return "", "", 0, nil, err
	}
	addr := net.JoinHostPort(ip, ports[0])
	cfg := fmt.Sprintf(`# Generated by cheops bench forwarding: a plain reverse proxy on loopback.
global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
%s

frontend bench
    bind %s
    default_backend app

backend app
    server app %s
`, extra.option, addr, backend)
	if extra.source != "" {
		cfg = strings.TrimSuffix(cfg, "\n") + " source " + extra.source + "\n"
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", "", 0, nil, fmt.Errorf("bench: %w", err)
	}
	version := "haproxy"
	if out, err := exec.CommandContext(ctx, bin, "-v").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			version = "HAProxy " + strings.SplitN(f[2], "-", 2)[0]
		}
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Dir = dir
	stop, err := startProxyProcess(ctx, "haproxy", cmd, addr, cmp.Or(extra.probe, "/posts/1"))
	if err != nil {
		return "", "", 0, nil, err
	}
	return addr, version, cmd.Process.Pid, stop, nil
}

// startGoProxy runs the bare Go reverse proxy of a path (pathGoProxy,
// pathGoServer, pathGoRaw: `cheops bench-goproxy`, ServeGoProxy) of bin
// on ip (a free port) in front of backend and returns its address, its
// process id and a function that stops it.
func startGoProxy(ctx context.Context, bin, ip, backend, path string) (string, int, func(), error) {
	ports, err := freePorts(ip, 1)
	if err != nil {
		return "", 0, nil, err
	}
	addr := net.JoinHostPort(ip, ports[0])
	mode := map[string]string{pathGoProxy: "net/http", pathGoServer: "server", pathGoRaw: "raw"}[path]
	cmd := exec.Command(bin, GoProxyCommand, "--listen", addr, "--backend", backend, "--mode", mode)
	stop, err := startProxyProcess(ctx, path, cmd, addr, "/posts/1")
	if err != nil {
		return "", 0, nil, err
	}
	return addr, cmd.Process.Pid, stop, nil
}

// startProxyProcess starts cmd, a reverse proxy listening on addr in
// front of an application, waits until a GET of probePath through it
// answers 200 and returns a function that stops it.
func startProxyProcess(ctx context.Context, what string, cmd *exec.Cmd, addr, probePath string) (func(), error) {
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", what, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	probe := newTarget(what, "http://"+addr, "")
	defer probe.close()
	if err := waitFor(ctx, 30*time.Second, what+" answers", func() error {
		select {
		case <-exited:
			return fmt.Errorf("%s exited: %s", what, tail(logs.String(), 1000))
		default:
		}
		_, _, err := probe.do(ctx, http.MethodGet, probePath, nil, http.StatusOK)
		return err
	}); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func hostPortOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Host
}

// citySites names n sites: cities first, then s10, s11, ….
func citySites(n int) []string {
	cities := []string{"paris", "berlin", "rome", "madrid", "vienna", "oslo", "lisbon", "prague", "warsaw", "dublin"}
	var out []string
	for i := range n {
		if i < len(cities) {
			out = append(out, cities[i])
		} else {
			out = append(out, fmt.Sprintf("s%02d", i))
		}
	}
	return out
}

// Table writes the latencies and throughput of every path at every RTT,
// and the target.
func (r *ForwardingResult) Table(w io.Writer) {
	where := fmt.Sprintf("%d sites (agent processes on loopback, emulated WAN)", r.Sites)
	if r.Mode == "agents" {
		where = fmt.Sprintf("a running deployment of %d agents", r.Sites)
	}
	fmt.Fprintf(w, "forwarding: GET %s and POST /posts on %s's json-server; %s\n", r.Item, r.AppSite, where)
	if r.Remote != "" {
		fmt.Fprintf(w, "remote agent: %s (one WAN hop from %s)", r.Remote, r.AppSite)
		if r.Proxy != "" {
			fmt.Fprintf(w, "; reverse proxy: %s", r.Proxy)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%d GETs and %d creates per path at 0 ms (interleaved), GET req/s with %d clients for %.1f s\n\n",
		r.Gets, r.Creates, r.Workers, r.ThroughputSeconds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "RTT\tpath\tGET p50 ms\tGET p99 ms\tadded p50\tGET req/s\tPOST p50 ms\tPOST p99 ms\tadded p50\terrors\t")
	for _, run := range r.Runs {
		for _, p := range run.Paths {
			fmt.Fprintf(tw, "%.0f ms\t%s\t%.2f\t%.2f\t%+.2f\t%.0f\t%.2f\t%.2f\t%+.2f\t%d\t\n", run.RTT, p.Path,
				p.Get.P50, p.Get.P99, p.GetAdded, p.GetRPS, p.Create.P50, p.Create.P99, p.CreateAdded, p.Errors)
		}
	}
	tw.Flush()
	for _, run := range r.Runs {
		for _, p := range run.Paths {
			if len(p.GetCPU) == 0 {
				continue
			}
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(p.GetCPU)) {
				parts = append(parts, fmt.Sprintf("%s %.0f", k, p.GetCPU[k]))
			}
			fmt.Fprintf(w, "CPU µs per GET at %.0f ms, %s (%d clients): %s\n", run.RTT, p.Path, r.Workers, strings.Join(parts, ", "))
		}
	}
	fmt.Fprintln(w)
	if r.Mode == "agents" {
		fmt.Fprintf(w, "target (local forward <= %.1fx the reverse proxy's added latency): not measured on a running deployment\n", r.RatioTarget)
		return
	}
	if len(r.Runs) > 0 {
		r.latencyTable(w)
	}
	r.restTable(w)
}

// latencyTable writes the local agent's verdict and the remote agent's
// share of its added latency.
func (r *ForwardingResult) latencyTable(w io.Writer) {
	verdict := "met"
	if !r.Met {
		verdict = "MISSED"
	}
	ratio := "n/a"
	if r.Ratio > 0 {
		ratio = fmt.Sprintf("%.2fx", r.Ratio)
	}
	fmt.Fprintf(w, "added GET p50 at 0 ms: local agent %.3f ms, %s %.3f ms: %s (target <= %.1fx): %s\n",
		r.LocalAdded, r.Proxy, r.ProxyAdded, ratio, r.RatioTarget, verdict)
	if r.GoProxyAdded != 0 && r.ProxyAdded > 0.001 {
		fmt.Fprintf(w, "floor of net/http: a bare Go reverse proxy (httputil.ReverseProxy, a process of its own) adds %.3f ms: %.2fx %s's; the local agent %.2fx the Go proxy's\n",
			r.GoProxyAdded, r.GoProxyAdded/r.ProxyAdded, r.Proxy, r.LocalAdded/r.GoProxyAdded)
	}
	if r.GoServerAdded != 0 && r.ProxyAdded > 0.001 {
		fmt.Fprintf(w, "net/http's server with the agent's own connections to the application: adds %.3f ms: %.2fx %s's; the local agent %.2fx it\n",
			r.GoServerAdded, r.GoServerAdded/r.ProxyAdded, r.Proxy, r.LocalAdded/r.GoServerAdded)
	}
	if r.GoRawAdded != 0 && r.ProxyAdded > 0.001 {
		fmt.Fprintf(w, "floor of Go without net/http's server: a goroutine per connection, the standard library's parsers, adds %.3f ms: %.2fx %s's\n",
			r.GoRawAdded, r.GoRawAdded/r.ProxyAdded, r.Proxy)
	}
	if r.Note != "" {
		fmt.Fprintln(w, "note:", r.Note)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "RTT\temulated round trip p50 ms\tp99 ms\tremote agent added GET p50\tcheops' share\t")
	for _, run := range r.Runs {
		if far := run.Path(pathRemote); far != nil && run.Emulation.N > 0 {
			fmt.Fprintf(tw, "%.0f ms\t%.2f\t%.2f\t%+.2f\t%+.2f\t\n", run.RTT, run.Emulation.P50, run.Emulation.P99, far.GetAdded, far.GetAdded-run.Emulation.P50)
		}
	}
	tw.Flush()
	for _, run := range r.Runs {
		chain, far := run.Path(pathChain), run.Path(pathRemote)
		if chain != nil && far != nil && run.Emulation.N > 0 {
			fmt.Fprintf(w, "two HAProxy in a row through the relay at %.0f ms (client -> HAProxy at %s -> relay -> HAProxy at %s -> application): added GET p50 %+.2f ms, %+.2f over the emulated round trip; remote agent %+.2f\n",
				run.RTT, r.Remote, r.AppSite, chain.GetAdded, chain.GetAdded-run.Emulation.P50, far.GetAdded)
		}
	}
	for _, run := range r.Runs {
		if len(run.Clients) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nGET req/s at %.0f ms RTT by concurrent clients (%.1f s each)\n", run.RTT, r.ThroughputSeconds)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "clients\tremote agent\tdirect\t")
		for _, c := range run.Clients {
			fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t\n", c.Clients, c.Remote, c.Direct)
		}
		tw.Flush()
	}
}

// restTable writes the large bodies, the replicated creates and every
// target.
func (r *ForwardingResult) restTable(w io.Writer) {
	if len(r.Rounds) > 0 {
		fmt.Fprintf(w, "\nGET req/s with %d clients at 0 ms, rounds alternated (%.1f s each), CPU µs per GET\n", r.Workers, r.ThroughputSeconds)
		for _, rd := range r.Rounds {
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(rd.GetCPU)) {
				parts = append(parts, fmt.Sprintf("%s %.0f", k, rd.GetCPU[k]))
			}
			fmt.Fprintf(w, "  %-12s %5.0f req/s  %s\n", rd.Path, rd.GetRPS, strings.Join(parts, ", "))
		}
	}
	if len(r.Bodies) > 0 {
		fmt.Fprintf(w, "\n%d MiB bodies at 0 ms (the Go application's /blob, --max-body %d MiB)\n", r.BodyMiB, 2*r.BodyMiB)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "path\tGET MiB/s\tPUT MiB/s\t")
		for _, b := range r.Bodies {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t\n", b.Path, b.GetMBps, b.PutMBps)
		}
		tw.Flush()
		if d, ok := r.body(pathDirect); ok && d.GetMBps > 0 && d.PutMBps > 0 {
			var parts []string
			for _, b := range r.Bodies[1:] {
				parts = append(parts, fmt.Sprintf("%s %.2f / %.2f", b.Path, b.GetMBps/d.GetMBps, b.PutMBps/d.PutMBps))
			}
			fmt.Fprintf(w, "against direct (GET / PUT; HAProxy with option splice-auto): %s\n", strings.Join(parts, ", "))
		}
		if len(r.BodyCPU) > 0 {
			fmt.Fprintln(w, "CPU µs per MiB moved (over every move; bench: the client, the application and the relays):")
			for _, k := range slices.Sorted(maps.Keys(r.BodyCPU)) {
				var parts []string
				total := 0.0
				for _, p := range slices.Sorted(maps.Keys(r.BodyCPU[k])) {
					parts = append(parts, fmt.Sprintf("%s %.0f", p, r.BodyCPU[k][p]))
					total += r.BodyCPU[k][p]
				}
				fmt.Fprintf(w, "  %s: %s; %.0f in all\n", k, strings.Join(parts, ", "), total)
			}
		}
		if r.LinkMBps > 0 {
			fmt.Fprintf(w, "the emulated link alone (plain TCP through the relays, one way): %.0f MiB/s, CPU %.0f µs per MiB\n", r.LinkMBps, r.LinkCPU)
		}
		if r.P2PMBps > 0 {
			fmt.Fprintf(w, "a libp2p stream alone through the same relays (TLS 1.3 + yamux, as between agents; no HTTP, no agent): %.0f MiB/s, CPU %.0f µs per MiB\n", r.P2PMBps, r.P2PCPU)
		}
		if bound, ok := r.remoteBound(); ok {
			fmt.Fprintf(w, "bound of the remote path on this machine's %d cores, all busy with it (the direct path's CPU per MiB and the libp2p link's, nothing for the agents): %.0f MiB/s GET, %.0f PUT\n",
				runtime.NumCPU(), bound[0], bound[1])
		}
		for _, site := range slices.Sorted(maps.Keys(r.RSSAfter)) {
			fmt.Fprintf(w, "agent of %s: peak RSS %.1f MiB before, %.1f MiB after\n", site, r.RSSBefore[site], r.RSSAfter[site])
		}
	}
	if r.CreateClients > 0 {
		fmt.Fprintf(w, "\nreplicated creates (2 sites, %d clients, a Go application answering at once, 0 ms RTT): %.0f creates/s, %d errors\n",
			r.CreateClients, r.ReplicatedCreates, r.CreateErrors)
		if len(r.CreateCPU) > 0 {
			var parts []string
			total := 0.0
			for _, k := range slices.Sorted(maps.Keys(r.CreateCPU)) {
				parts = append(parts, fmt.Sprintf("%s %.0f", k, r.CreateCPU[k]))
				total += r.CreateCPU[k]
			}
			fmt.Fprintf(w, "  CPU µs per create: %s (bench: the clients and both applications); %.0f in all\n", strings.Join(parts, ", "), total)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\ntargets:")
		for _, t := range r.Targets {
			verdict, op := "met", "<="
			if !t.Met {
				verdict = "MISSED"
			}
			if t.Above {
				op = ">="
			}
			fmt.Fprintf(w, "  %-6s %s: %.3f %s (%s %.3f)\n", verdict, t.Name, t.Measured, t.Unit, op, t.Limit)
		}
	}
}

// Plot draws GET p50 and p99 latency of every path at every RTT, and the
// same for creates.
func (r *ForwardingResult) Plot(dir, prefix string) ([]string, error) {
	var labels []string
	var getP50, getP99, postP50, postP99 plotter.Values
	for _, run := range r.Runs {
		for _, p := range run.Paths {
			labels = append(labels, fmt.Sprintf("%s\n%.0f ms RTT", p.Path, run.RTT))
			getP50 = append(getP50, p.Get.P50)
			getP99 = append(getP99, p.Get.P99)
			postP50 = append(postP50, p.Create.P50)
			postP99 = append(postP99, p.Create.P99)
		}
	}
	var out []string
	for _, fig := range []struct {
		name, what string
		p50, p99   plotter.Values
	}{{"get", "GET " + r.Item, getP50, getP99}, {"create", "POST /posts", postP50, postP99}} {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("Forwarding: %s on %s's json-server", fig.what, r.AppSite)
		p.Y.Label.Text = "latency (ms)"
		w := vg.Points(14)
		b50, err := plotter.NewBarChart(fig.p50, w)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		b50.Color, b50.LineStyle.Width, b50.Offset = blue, 0, -w/2
		b99, err := plotter.NewBarChart(fig.p99, w)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		b99.Color, b99.LineStyle.Width, b99.Offset = grey, 0, w/2
		p.Add(b50, b99)
		p.Legend.Add("p50", b50)
		p.Legend.Add("p99", b99)
		p.Legend.Top, p.Legend.Left = true, true
		p.NominalX(labels...)
		path := filepath.Join(dir, prefix+"-"+fig.name+".svg")
		if err := p.Save(vg.Length(1.4*float64(len(labels))+2)*vg.Inch, 4*vg.Inch, path); err != nil {
			return nil, fmt.Errorf("bench: save plot: %w", err)
		}
		out = append(out, path)
	}
	return out, nil
}

// cpuTimes reads the CPU time (user and system) of every running agent of
// c and of this process ("bench").
func cpuTimes(c *Cluster) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, s := range c.Sites {
		if s.agent == nil || s.agent.Process == nil {
			continue
		}
		if d, ok := ProcessCPU(s.agent.Process.Pid); ok {
			out[s.Name] = d
		}
	}
	out["bench"] = SelfCPU()
	return out
}

// cpuPer is the CPU time between two readings of cpuTimes, in µs per
// one of n operations.
func cpuPer(before, after map[string]time.Duration, n float64) map[string]float64 {
	return cpuPerOp(cpuSpent(before, after), n)
}

// cpuSpent is the CPU time each process spent between two readings of
// cpuTimes (the processes in both).
func cpuSpent(before, after map[string]time.Duration) map[string]time.Duration {
	spent := map[string]time.Duration{}
	for k, t := range after {
		if t0, ok := before[k]; ok {
			spent[k] = t - t0
		}
	}
	return spent
}

// cpuPerOp is the CPU time each process spent, in µs per one of n
// operations.
func cpuPerOp(spent map[string]time.Duration, n float64) map[string]float64 {
	if n <= 0 {
		return nil
	}
	out := map[string]float64{}
	for k, t := range spent {
		out[k] = math.Round(float64(t) / float64(time.Microsecond) / n)
	}
	return out
}
