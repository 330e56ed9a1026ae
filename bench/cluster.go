package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"cheops/bench/wan"
	"cheops/node"
)

// ClusterOptions configures a deployment of agent processes on this
// machine.
type ClusterOptions struct {
	// Binary is the cheops executable each site runs (`cheops agent`).
	Binary string
	// Sites are the site names, in order; site i gets the loopback
	// addresses wan.SiteAddr(i) and wan.RelayAddr(i).
	Sites []string
	// Dir holds every site's data directory and logs.
	Dir string
	// RTT is the emulated round-trip time between every two sites.
	RTT time.Duration
	// AgentArgs are added to every agent's command line; SiteArgs to
	// the named site's only.
	AgentArgs []string
	SiteArgs  map[string][]string
	// Log receives progress; nil discards.
	Log *slog.Logger
}

// Cluster is a deployment of `cheops agent` processes on loopback, one per
// site, each in front of its own json-server, linked through an emulated
// WAN (package wan). The benchmark driver reaches agents and applications
// directly on 127.0.0.x, without delay, as a user on the site would.
type Cluster struct {
	opt   ClusterOptions
	Net   *wan.Network
	Sites []*Site
	http  *http.Client
}

// Site is one site of a Cluster.
type Site struct {
	Name   string
	API    string // http://host:port of the agent's API
	App    string // http://host:port of the site's json-server
	Peer   string
	ip     string
	relay  string // host:port announced to other sites
	listen string
	dir    string
	agent  *exec.Cmd
	exited chan struct{}
	app    *exec.Cmd
	logs   *lockedBuffer
}

// StartCluster starts the applications, the relays and the agents, and
// waits until every site sees every other up.
func StartCluster(ctx context.Context, opt ClusterOptions) (*Cluster, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	jsonServer, err := exec.LookPath("json-server")
	if err != nil {
		return nil, fmt.Errorf("%w: json-server (npm install --global json-server@0.17.4; or run contrib/install-deps.sh, `make deps`)", ErrMissingCommand)
	}
	c := &Cluster{opt: opt, Net: wan.New(opt.Log), http: &http.Client{Timeout: 30 * time.Second}}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	var trust []string
	for i, name := range opt.Sites {
		s := &Site{Name: name, ip: wan.SiteAddr(i), dir: filepath.Join(opt.Dir, name), logs: &lockedBuffer{}, exited: make(chan struct{})}
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		_, id, err := node.LoadIdentity(s.dir)
		if err != nil {
			return nil, fmt.Errorf("bench: identity of %s: %w", name, err)
		}
		s.Peer = id.String()
		trust = append(trust, s.Peer)
		c.Net.AddSite(name, s.ip)
		ports, err := freePorts(s.ip, 3)
		if err != nil {
			return nil, err
		}
		s.listen = net.JoinHostPort(s.ip, ports[0])
		s.API = "http://" + net.JoinHostPort(s.ip, ports[1])
		s.App = "http://" + net.JoinHostPort(s.ip, ports[2])
		if s.relay, err = c.Net.Expose(name, wan.RelayAddr(i), s.listen); err != nil {
			return nil, err
		}
		c.Sites = append(c.Sites, s)
	}
	if opt.RTT > 0 {
		c.Net.SetRTT(opt.RTT)
	}
	trustFile := filepath.Join(opt.Dir, "trust")
	if err := os.WriteFile(trustFile, []byte(strings.Join(trust, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	for _, s := range c.Sites {
		if err := c.startApp(ctx, s, jsonServer); err != nil {
			return nil, err
		}
	}
	for _, s := range c.Sites {
		if err := c.StartAgent(ctx, s.Name); err != nil {
			return nil, err
		}
	}
	if err := c.WaitStates(ctx, 2*time.Minute, c.Names(), c.Names(), "up"); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// Names lists the sites in order.
func (c *Cluster) Names() []string {
	var out []string
	for _, s := range c.Sites {
		out = append(out, s.Name)
	}
	return out
}

// Site returns the named site, or nil.
func (c *Cluster) Site(name string) *Site {
	for _, s := range c.Sites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (c *Cluster) startApp(ctx context.Context, s *Site, bin string) error {
	db := filepath.Join(s.dir, "db.json")
	if err := os.WriteFile(db, []byte(`{"posts": []}`), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	u, _ := url.Parse(s.App)
	s.app = exec.Command(bin, "--host", u.Hostname(), "--port", u.Port(), "--quiet", db)
	s.app.Dir = s.dir
	s.app.Stdout, s.app.Stderr = s.logs, s.logs
	s.app.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.app.Start(); err != nil {
		return fmt.Errorf("bench: json-server of %s: %w", s.Name, err)
	}
	return waitFor(ctx, 30*time.Second, s.Name+"'s json-server answers", func() error {
		_, err := c.get(ctx, s.App+"/posts")
		return err
	})
}

// StartAgent starts (or restarts) the agent of a site and waits until its
// API answers.
func (c *Cluster) StartAgent(ctx context.Context, name string) error {
	s := c.Site(name)
	args := []string{"agent", "--site", s.Name, "--data", s.dir,
		"--listen", "/ip4/" + s.ip + "/tcp/" + port(s.listen),
		"--announce", "/ip4/" + hostOf(s.relay) + "/tcp/" + port(s.relay),
		"--api", strings.TrimPrefix(s.API, "http://"),
		"--trust-file", filepath.Join(c.opt.Dir, "trust"),
		"--service", "posts=" + s.App, "--log-level", "warn"}
	for _, o := range c.Sites {
		if o != s {
			args = append(args, "--peer", "/ip4/"+hostOf(o.relay)+"/tcp/"+port(o.relay)+"/p2p/"+o.Peer)
		}
	}
	args = append(args, c.opt.AgentArgs...)
	args = append(args, c.opt.SiteArgs[s.Name]...)
	s.agent = exec.Command(c.opt.Binary, args...)
	s.agent.Stdout, s.agent.Stderr = s.logs, s.logs
	s.agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.agent.Start(); err != nil {
		return fmt.Errorf("bench: agent of %s: %w", s.Name, err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.agent, s.exited)
	return waitFor(ctx, 60*time.Second, s.Name+"'s agent answers", func() error {
		select {
		case <-s.exited:
			return fmt.Errorf("agent of %s exited: %s", s.Name, tail(s.logs.String(), 2000))
		default:
		}
		_, err := c.get(ctx, s.API+"/v1/health")
		return err
	})
}

// StopAgent stops a site's agent: SIGTERM, or SIGKILL when kill is set.
func (c *Cluster) StopAgent(name string, kill bool) {
	s := c.Site(name)
	if s == nil || s.agent == nil || s.agent.Process == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = s.agent.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.agent.Process.Kill()
		<-s.exited
	}
}

// Close stops every process and relay. The data stays in Dir.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, s := range c.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.StopAgent(s.Name, false)
			if s.app != nil && s.app.Process != nil {
				_ = s.app.Process.Kill()
				_ = s.app.Wait()
			}
		}()
	}
	wg.Wait()
	c.Net.Close()
	if dir := os.Getenv(LogsEnv); dir != "" {
		for _, s := range c.Sites {
			path := filepath.Join(dir, s.Name+".log")
			if err := os.WriteFile(path, []byte(s.logs.String()), 0o644); err != nil {
				slog.Warn("keep a site's logs", "path", path, "err", err)
			}
		}
	}
}

// LogsEnv names the environment variable that, set to a directory, keeps
// every site's agent and application logs there (NAME.log) when a
// cluster closes, for a look at a slow or failed run.
const LogsEnv = "CHEOPS_BENCH_LOGS"

// WaitStates waits until every observer sees every subject in state. The
// observers are asked at once, not one after the other: a round of
// sequential reads under load took long enough to make the time coarse.
func (c *Cluster) WaitStates(ctx context.Context, within time.Duration, observers, subjects []string, state string) error {
	return waitFor(ctx, within, fmt.Sprintf("%v see %v %s", observers, subjects, state), func() error {
		errs := make([]error, len(observers))
		var wg sync.WaitGroup
		for i, o := range observers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var sites []struct {
					Site  string `json:"site"`
					State string `json:"state"`
				}
				if err := c.getJSON(ctx, c.Site(o).API+"/v1/sites", &sites); err != nil {
					errs[i] = err
					return
				}
				seen := map[string]string{}
				for _, s := range sites {
					seen[s.Site] = s.State
				}
				for _, s := range subjects {
					if s != o && seen[s] != state {
						errs[i] = fmt.Errorf("%s sees %s %q", o, s, seen[s])
						return
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Do sends a request to a site's agent with a scope (empty: none) and a
// JSON body (nil: none).
func (c *Cluster) Do(ctx context.Context, site, method, path, scope string, body any) (int, http.Header, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Site(site).API+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if scope != "" {
		req.Header.Set("X-Cheops-Scope", scope)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out, err
}

func (c *Cluster) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, tail(string(b), 300))
	}
	return b, nil
}

func (c *Cluster) getJSON(ctx context.Context, u string, v any) error {
	b, err := c.get(ctx, u)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

// waitFor polls cond every 50 ms until it returns nil, the deadline
// passes or ctx ends.
func waitFor(ctx context.Context, within time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %s: not within %v: %w", what, within, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: %s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts reserves n ports on ip by binding and releasing them.
func freePorts(ip string, n int) ([]string, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []string
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("bench: free port on %s: %w", ip, err)
		}
		ls = append(ls, l)
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return ports, nil
}

func hostOf(hostport string) string { h, _, _ := net.SplitHostPort(hostport); return h }
func port(hostport string) string   { _, p, _ := net.SplitHostPort(hostport); return p }

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
